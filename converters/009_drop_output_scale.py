"""Downgrade: drop the output scale (a trained scale is lost)."""

source = "1.1.0"
target = "1.0.0"
touches = ["output_scale"]
lossy = True


def convert(ckpt):
    sd = ckpt["state_dict"]
    sd.pop("output_scale")
    return ckpt
