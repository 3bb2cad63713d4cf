"""Media as bytes, shared by the SFU (forwarding) and the recorder (export, verify): RTP headers
(`rtp`), codec payload descriptors (`payloads`), keyframe detection (`keyframes`) and what a
published track is (`track`). Plain functions and small dataclasses, no I/O."""
