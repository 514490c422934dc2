"""Branch lam: the output map is called head on the lam branch."""

source = "1.0.0"
target = "1.0.0+lam"
touches = ["output_map.*", "head.*"]


def convert(ckpt):
    sd = ckpt["state_dict"]
    for key in [k for k in sd if k.startswith("output_map.")]:
        sd["head." + key.removeprefix("output_map.")] = sd.pop(key)
    return ckpt
