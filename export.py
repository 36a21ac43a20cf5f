"""Export a trained checkpoint as a Hugging Face GPT-2 folder; see conf/export.yaml.
The installed command is gptlab-export; both run gptlab.entrypoints.export.main."""

from gptlab.entrypoints.export import main

if __name__ == "__main__":
    main()
