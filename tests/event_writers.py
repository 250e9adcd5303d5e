"""Writers of small event datasets in their real on-disk formats, for the tests of the event loaders.

``write_aedat4`` writes the AEDAT 4 container that tonic's reader (the ``aedat`` package) decodes: the magic line
``#!AER-DAT4.0\\r\\n``, a little-endian u32 length and an ``IOHeader`` flatbuffer (no compression, an XML stream
description declaring stream 0 as "EVTS" with the sensor size), then packets of ``u32 stream id, u32 length``
followed by a size-prefixed ``EventPacket`` flatbuffer (file identifier "EVTS") whose vector holds 16-byte
``Event`` structs ``{int64 t; int16 x; int16 y; bool on}``. Flatbuffers are laid out by hand (fixed tables,
8-byte aligned struct vector), since only these two table shapes are needed.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

AEDAT4_MAGIC = b"#!AER-DAT4.0\r\n"
_EVENT_STRUCT = np.dtype({"names": ["t", "x", "y", "on"], "formats": ["<i8", "<i2", "<i2", "u1"],
                          "offsets": [0, 8, 10, 12], "itemsize": 16})


def random_events(n: int, sensor: tuple[int, int] = (128, 128), duration_us: int = 1_000_000, seed: int = 0,
                  dtype=None) -> np.ndarray:
    """``n`` time-sorted events on a ``(W, H)`` sensor with both polarities, in tonic's default dtype."""
    from tonic.io import events_struct

    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=dtype or events_struct)
    events["x"] = rng.integers(0, sensor[0], n)
    events["y"] = rng.integers(0, sensor[1], n)
    events["t"] = np.sort(rng.integers(0, duration_us, n))
    events["p"] = rng.integers(0, 2, n).astype(bool)
    return events


def _ioheader(description: str) -> bytes:
    text = description.encode() + b"\0"
    # [root offset -> table at 20]["IOHE"][vtable: 10 bytes, table 8 bytes, fields: compression absent (None),
    # file_data_position absent (-1: read to the end), description at +4][pad][table][string]
    buffer = struct.pack("<I4s", 20, b"IOHE") + struct.pack("<HHHHH", 10, 8, 0, 0, 4) + b"\0\0"
    buffer += struct.pack("<iI", 12, 4) + struct.pack("<I", len(text) - 1) + text
    return buffer + b"\0" * (-len(buffer) % 4)


def _event_packet(events: np.ndarray) -> bytes:
    packed = np.zeros(len(events), dtype=_EVENT_STRUCT)
    packed["t"], packed["x"], packed["y"], packed["on"] = events["t"], events["x"], events["y"], events["p"]
    # [root offset -> table at 20]["EVTS"][vtable: 6 bytes, table 8 bytes, elements at +4][pad][table: soffset 8,
    # vector at +4][u32 count][structs from byte 32]; everything after the u32 size prefix.
    body = struct.pack("<I4s", 16, b"EVTS") + struct.pack("<HHH", 6, 8, 4) + b"\0\0"
    body += struct.pack("<iI", 8, 4) + struct.pack("<I", len(events)) + packed.tobytes()
    return struct.pack("<I", len(body)) + body


def write_aedat4(path: str | Path, events: np.ndarray, sensor: tuple[int, int] = (128, 128),
                 packets: int = 2) -> None:
    """Write ``events`` (fields x, y, t, p) as an uncompressed AEDAT 4 file with one event stream."""
    description = (
        '<dv version="2.0"><node name="outInfo" path="/mainloop/output/outInfo/">'
        '<node name="0" path="/mainloop/output/outInfo/0/">'
        '<attr key="compression" type="string">NONE</attr>'
        '<attr key="typeIdentifier" type="string">EVTS</attr>'
        '<node name="info" path="/mainloop/output/outInfo/0/info/">'
        f'<attr key="sizeX" type="int">{sensor[0]}</attr><attr key="sizeY" type="int">{sensor[1]}</attr>'
        "</node></node></node></dv>"
    )
    header = _ioheader(description)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(AEDAT4_MAGIC + struct.pack("<I", len(header)) + header)
        for chunk in np.array_split(events, packets):
            packet = _event_packet(chunk)
            out.write(struct.pack("<II", 0, len(packet)) + packet)


def write_cifar10dvs(root: str | Path, per_class: int, events_per_file: int = 300, classes=None) -> dict:
    """``root/CIFAR10DVS/<class>/cifar10_<class>_<i>.aedat4`` as tonic lays out the release; returns
    ``{relative path: events}``."""
    from spikformer.data.cifar10dvs import CLASSES

    written = {}
    for c, name in enumerate(classes or CLASSES):
        for i in range(per_class):
            events = random_events(events_per_file + i, seed=1000 * c + i)
            relative = f"CIFAR10DVS/{name}/cifar10_{name}_{i}.aedat4"
            write_aedat4(Path(root) / relative, events)
            written[relative] = events
    return written


def write_dvsgesture(root: str | Path, users: dict[str, list[int]], events_per_file: int = 400) -> dict:
    """``root/DVSGesture/ibmGesture{Train,Test}/<user folder>/<label>.npy`` as tonic lays out its release: each
    file an ``[N, 4]`` array of (x, y, p, t in ms). ``users`` maps ``"ibmGestureTrain/user01_led"`` to labels."""
    written = {}
    for k, (folder, labels) in enumerate(users.items()):
        for label in labels:
            events = random_events(events_per_file + label, duration_us=6_000_000, seed=100 * k + label)
            table = np.stack([events["x"], events["y"], events["p"], events["t"] // 1000], axis=1).astype(np.int64)
            relative = f"DVSGesture/{folder}/{label}.npy"
            (Path(root) / relative).parent.mkdir(parents=True, exist_ok=True)
            np.save(Path(root) / relative, table)
            written[relative] = events
    return written
