"""Byte counts for people: ``human_bytes(1536) == '1.5 KiB'`` (binary units, as nvidia-smi, df
-h and free report them)."""

from __future__ import annotations

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_bytes(n: float) -> str:
    value, unit = float(n), BYTE_UNITS[0]
    for unit in BYTE_UNITS:
        if abs(value) < 1024 or unit == BYTE_UNITS[-1]:
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
