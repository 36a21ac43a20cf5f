"""Train a GPT. `python train.py --help` lists the config groups; see conf/train.yaml.
The installed command is gptlab-train; both run gptlab.entrypoints.train.main."""

from gptlab.entrypoints.train import main

if __name__ == "__main__":
    main()
