"""Train BPE at several vocabulary sizes on one text and write a vocabulary report; see conf/vocab_report.yaml.
The installed command is gptlab-vocab-report; both run gptlab.entrypoints.vocab_report.main."""

from gptlab.entrypoints.vocab_report import main

if __name__ == "__main__":
    main()
