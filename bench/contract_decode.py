"""Decoding cost of event payloads: a page of 1,000 assigned devices and one small user event.

Prints the best of ``--repeat`` timings per decode (each timing averages ``--number`` calls).

    .venv/bin/python bench/contract_decode.py [--number 200] [--repeat 5]
"""
from __future__ import annotations

import argparse
import timeit

from shared.contracts.enrollment import AssignedDevice, DevicesAssigned
from shared.contracts.roster import UserImported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    page = DevicesAssigned(token_id="t1", devices=[
        AssignedDevice(serial_number=f"SN{i:08d}", model="iPad Air", device_family="iPad", os="iPadOS")
        for i in range(1000)
    ]).to_payload()
    user = UserImported(user_id="u1", user_type="student", name="Ada Lovelace", email="ada@example.org",
                        managed_apple_id="ada@school.example", locations=["L1", "L2"], grade_level="7",
                        source="csv").to_payload()
    for label, payload, decode, unit, scale in [
        ("DevicesAssigned, 1,000 devices", page, DevicesAssigned.from_payload, "ms", 1e3),
        ("UserImported", user, UserImported.from_payload, "µs", 1e6),
    ]:
        decode(payload)  # first call compiles the decoders
        best = min(timeit.repeat(lambda: decode(payload), number=args.number, repeat=args.repeat)) / args.number
        print(f"{label:32} {best * scale:8.2f} {unit} per decode")


if __name__ == "__main__":
    main()
