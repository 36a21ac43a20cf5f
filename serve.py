"""Serve a checkpoint over HTTP (OpenAI-compatible API + playground page); see conf/serve.yaml.
The installed command is gptlab-serve; both run gptlab.entrypoints.serve.main."""

from gptlab.entrypoints.serve import main

if __name__ == "__main__":
    main()
