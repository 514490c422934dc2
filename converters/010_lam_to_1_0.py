"""Leave branch lam for 1.0.0: head is called output_map again."""

source = "1.0.0+lam"
target = "1.0.0"
touches = ["output_map.*", "head.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in [k for k in sd if k.startswith("head.")]:
        sd["output_map." + key.removeprefix("head.")] = sd.pop(key)
    return ckpt
