"""Risk of a MEDS task by trajectory sampling from a trained EHR checkpoint; see conf/ehr_eval.yaml.
The installed command is gptlab-ehr-eval; both run gptlab.entrypoints.ehr_eval.main."""

from gptlab.entrypoints.ehr_eval import main

if __name__ == "__main__":
    main()
