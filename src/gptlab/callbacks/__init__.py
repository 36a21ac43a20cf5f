"""Lightning callbacks used by conf/callbacks: one module per concern.

- monitoring: throughput and MFU, samples during training (what the run is doing)
- safety: NaN/inf guard, checkpoint on interrupt, crash-safe checkpoint files (what keeps a
  run's work safe)

Configs name them by full path (`_target_: gptlab.callbacks.monitoring.Throughput`), so this
package imports nothing eagerly.
"""
