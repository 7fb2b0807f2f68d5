"""python -m bench.plain_stream: the plainest Beam stream, for bench.soak to compare memory with.

    ReadFromPubSub(subscription) -> Map(the payload, upper-cased) -> WriteToPubSub(topic)

on the same local runner stream_infer pins (the BundleBasedDirectRunner), with Beam's own
Pub/Sub read, or with --prompt_pulls our local read (pipelines/local/pubsub_prompt_pulls.py).
Runs until Ctrl-C or SIGTERM.
"""

import argparse
import os
import signal
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plain_stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_subscription", required=True)
    parser.add_argument("--output_topic", required=True)
    parser.add_argument("--pubsub_emulator", required=True, help="HOST:PORT")
    parser.add_argument("--project", required=True)
    parser.add_argument("--prompt_pulls", action="store_true", help="our local read instead of Beam's")
    args = parser.parse_args(argv)
    os.environ["PUBSUB_EMULATOR_HOST"] = args.pubsub_emulator

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.runners import pinned_runner

    if args.prompt_pulls:
        from pipelines.local import pubsub_prompt_pulls

        pubsub_prompt_pulls.use_prompt_pulls()
    options = PipelineOptions(["--streaming", "--project", args.project])
    p = beam.Pipeline(runner=pinned_runner(options, streaming=True), options=options)
    _ = (p
         | beam.io.ReadFromPubSub(subscription=args.input_subscription)
         | beam.Map(lambda data: data.upper())
         | beam.io.WriteToPubSub(args.output_topic))
    result = p.run()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print("plain_stream: reading", args.input_subscription, file=sys.stderr, flush=True)
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        result.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
