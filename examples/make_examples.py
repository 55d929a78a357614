"""Regenerates the shipped example images: examples/<sample>/image-XX.png.

Each sample is 12 simulated HAADF-STEM images (512×512 px, 1.2 nm/px, 149 e/Å², shipped
abTEM tables: the settings of the training database) of 12 aggregates drawn from one known θ.
The θ, seed and index of every image are in its PNG metadata, so hagg-characterize reports its
estimate beside the truth.

  python examples/make_examples.py
"""
import pathlib

from hagg_tf import ModelParameters, sample_aggregate
from hagg_tf.stem import render_stem, write_stem_png

#: name → (θ = (θ_Df, θ_ρ, θ_0, θ_1), base seed).
SAMPLES = {
    "sample_a": ((1.8, 0.5, 3, 2), 101),
    "sample_b": ((2.2, 0.3, 5, 1), 102),
}
IMAGES_PER_SAMPLE = 12


def main():
    root = pathlib.Path(__file__).resolve().parent
    for name, (theta, seed) in SAMPLES.items():
        params = ModelParameters(*theta)
        for index in range(IMAGES_PER_SAMPLE):
            aggregate = sample_aggregate(params, seed, index)
            image = render_stem(aggregate, seed=seed, index=index)
            write_stem_png(root / name / f"image-{index:02d}.png", image)
        print(f"{name}: {IMAGES_PER_SAMPLE} images of θ = {theta} (seed {seed})")


if __name__ == "__main__":
    main()
