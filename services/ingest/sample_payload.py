"""Prints the base64 of one valid, serialized UserEvent: the `payload` of an envelope sent by hand.

    bazel run //services/ingest:sample_payload -- --event-id cli-1

gRPC's JSON mapping carries `bytes` fields as base64, so this is what grpcurl's `-d` request
needs in `payload` (see "Calling it" in README.md). The event is a page view whose client time is
now, so it passes validation; its `event_id` must equal the envelope's.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from typing import Optional, Sequence

from services.ingest import sample_events


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--event-id", default=os.environ.get("DP_SAMPLE_EVENT_ID", "cli-1"),
                   help="the event's id; use the same in the envelope (env DP_SAMPLE_EVENT_ID, default cli-1)")
    args = p.parse_args(argv)
    if not args.event_id or len(args.event_id) > 128:
        p.error("--event-id must have 1 to 128 characters")
    return args


def payload(event_id: str) -> str:
    event = sample_events.user_event(0)
    event.event_id = event_id
    return base64.b64encode(event.SerializeToString()).decode("ascii")


def main(argv: Optional[Sequence[str]] = None) -> int:
    print(payload(parse_args(argv).event_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
