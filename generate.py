"""Sample text from a trained checkpoint or Hugging Face GPT-2 weights; see conf/generate.yaml.
The installed command is gptlab-generate; both run gptlab.entrypoints.generate.main."""

from gptlab.entrypoints.generate import main

if __name__ == "__main__":
    main()
