#!/bin/bash
# How the networks in saved_models/characterize/3 were made: the realistic database (carbon
# films, detector offsets and gains, read noise, focus, blur, scan distortions, doses, pixel
# sizes and particle radii drawn per image), one shared feature extractor f trained on 2 CPU
# cores for all five networks, then the composite export with its LiteRT conversion and the
# training domain. Every step resumes when rerun (the training after every epoch).
# Wall on 2 cores: 29 min database, 3 min pooled cache, about 55 min backbone (12 epochs),
# a few minutes calibration and ν-image heads, a few minutes export and domain; see
# saved_models/characterize/3/TRAINING.md and docs/learning.md ("The shared backbone").
set -euo pipefail
cd "$(dirname "$0")/.."
python tools/generate_dataset.py --preset=realistic --output=work/datasets/realistic --workers=2
python tools/train_backbone.py --dataset=work/datasets/realistic \
  --pooled_cache=work/cache/realistic_pool2 --output=work/training/shared_fine \
  --epochs=12 --max_wall_minutes=65
python tools/export_models.py --backbone=work/training/shared_fine \
  --dataset=work/datasets/realistic --output=saved_models --version=3 --kernel_dtype=float32 \
  --evaluate_dataset=work/datasets/realistic --litert
python -c "from hagg_tf.estimation.domain import measure_training_domain, write_training_domain
write_training_domain(measure_training_domain('work/datasets/realistic', split='validation'),
                      'saved_models/characterize/3')"
