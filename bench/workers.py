"""python -m bench.workers: one worker process against two, on model B (the compute-bound CNN).

The batch job over the same TFRecord input, in a fresh process each time (bench.worker): "fast"
on the FnApiRunner's one in-process worker, "fast-2-workers" on two SDK worker processes
(--direct_running_mode=multi_processing --direct_num_workers=2), where the chunks read are
redistributed so both score. Interleaved repeats, start-up subtracted (each mode's own, measured on
a tiny input: two worker processes start and load the model twice). Prints both rates and their
ratio; with 2 cores and TensorFlow already using both for one model call, expect well under 2x.
"""

import argparse
import json
import os
import statistics
import sys

from bench import workloads
from bench.run import ROOT, describe_run, measure_mode

MODES = ("fast", "fast-2-workers")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "work"), help="models and data cache")
    args = parser.parse_args(argv)
    workload = workloads.WORKLOADS["B"]
    model_dir = workloads.ensure_model(workload, args.work)
    data = workloads.ensure_data(workload, args.work, args.records)
    tiny = workloads.ensure_data(workload, args.work, workload.tiny_records, tag="-tiny")
    rates = {mode: [] for mode in MODES}
    for repeat in range(args.repeats):
        for mode in MODES:
            run = measure_mode(workload, mode, model_dir, data, args.records, tiny, args.work)
            rates[mode].append(run["examples_per_s"])
            print(f"  B repeat {repeat + 1} {mode:15s} " + describe_run(run), file=sys.stderr)
    one, two = (statistics.median(rates[m]) for m in MODES)
    print(json.dumps({"workload": workload.description, "cpus": os.cpu_count(), "one_worker_examples_per_s": one,
                      "two_workers_examples_per_s": two, "two_vs_one": two / one}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
