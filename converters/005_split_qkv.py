"""Downgrade: split the fused qkv projection back into q, k and v."""

source = "1.0.0"
target = "0.3.0"
touches = ["processor.q_proj.*", "processor.k_proj.*", "processor.v_proj.*", "processor.qkv_proj.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for param in ("weight", "bias"):
        fused = sd.pop(f"processor.qkv_proj.{param}")
        for name, part in zip("qkv", fused.chunk(3, dim=0), strict=True):
            sd[f"processor.{name}_proj.{param}"] = part.clone()
    return ckpt
