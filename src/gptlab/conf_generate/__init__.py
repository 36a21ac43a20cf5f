"""generate's own config groups (decoding/), outside conf/ so that train's `--help` lists only train's
groups; conf/generate.yaml adds this folder to its Hydra search path (pkg://gptlab.conf_generate)."""
