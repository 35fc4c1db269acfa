"""A third-party subscriber to an rtdecode session, in plain Python (no rtdecode import).

rtdecode publishes under ``rtdecode/<session>/`` — ``status`` (retained), ``conditions``,
``clip`` and ``feedback`` — as msgpack maps with a ``schema`` version; numpy arrays travel as
``{"__nd__": true, "dtype", "shape", "data"}`` maps (see docs/outputs.md). This script
prints what arrives and is the place to react to it (e.g. change a stimulus when the
feedback score crosses a threshold).

Install and run::

    pip install paho-mqtt msgpack numpy
    python docs/subscriber_example.py --host localhost --session +   # '+': every session
    python docs/subscriber_example.py --save-frames /tmp/frames      # clips as PNG files
"""

from __future__ import annotations

import argparse
from pathlib import Path

import msgpack
import numpy as np
import paho.mqtt.client as mqtt

SCHEMA = 1  # the payload schema this script understands
MAX_BYTES = 16 << 20  # never unpack anything larger


def ndarray_hook(obj: dict):
    """Rebuild numpy arrays packed as ``__nd__`` maps."""
    if obj.get("__nd__") is True:
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def decode(payload: bytes) -> dict | None:
    """The message as a dict, or None when it is too large, malformed or of another schema."""
    if len(payload) > MAX_BYTES:
        return None
    try:
        body = msgpack.unpackb(payload, object_hook=ndarray_hook, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    return body if isinstance(body, dict) and body.get("schema") == SCHEMA else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--session", default="+", help="session name, or + for all")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--save-frames", type=Path, help="write every clip frame here as PNG")
    ap.add_argument("--count", type=int, default=0, help="exit after N messages (0: run until Ctrl-C)")
    args = ap.parse_args()
    seen = 0

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(f"rtdecode/{args.session}/#", qos=1)

    def on_message(client, userdata, msg):
        nonlocal seen
        body = decode(msg.payload)
        if body is None:
            print(f"skipped a malformed message on {msg.topic}")
            return
        session, kind = msg.topic.split("/")[1:3]
        tr = body.get("tr")
        if kind == "status":
            print(f"[{session}] status: state {body.get('state')}, TR {tr}, FD {body.get('fd', 0.0):.2f} mm")
        elif kind == "conditions":
            blurry = body.get("blurry")
            shape = None if blurry is None else blurry.shape
            print(
                f"[{session}] conditions of TR {tr}: blurry {shape}, caption {body.get('caption') or '—'!r}"
            )
        elif kind == "feedback":
            print(f"[{session}] feedback of TR {tr}: {body['score']:.3f} ({body['kind']})")
        elif kind == "clip":
            n, fmt = body["shape"][0], body["encoding"]
            print(f"[{session}] clip of TR {tr}: {n} frames ({fmt}) at {body['fps']} fps")
            if args.save_frames and body["encoding"] == "png":
                args.save_frames.mkdir(parents=True, exist_ok=True)
                for i, png in enumerate(body["frames"]):  # already PNG files: just write them
                    (args.save_frames / f"{session}_tr{tr:04d}_{i:02d}.png").write_bytes(png)
        seen += 1
        if args.count and seen >= args.count:
            client.disconnect()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if args.username:
        client.username_pw_set(args.username, args.password)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=30)
    try:
        client.loop_forever(retry_first_connection=True)  # reconnects by itself
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
