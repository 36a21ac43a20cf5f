"""Report on a trained run: loss curves, attention maps, samples, per-position loss, embeddings;
see conf/analyze.yaml.
The installed command is gptlab-analyze; both run gptlab.entrypoints.analyze.main."""

from gptlab.entrypoints.analyze import main

if __name__ == "__main__":
    main()
