"""ehr_eval's own config groups (task/: ACES task configs), outside conf/ so that train's `--help` lists
only train's groups; conf/ehr_eval.yaml adds this folder to its Hydra search path (pkg://gptlab.conf_ehr_eval)."""
