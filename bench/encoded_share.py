"""A bench user's screen share encoded once, then published as it is (no encoder per user).

A real user's browser encodes their share on their own machine. On the bench, 30 users each ran
libwebrtc's VP8 encoder on the two cores they share with the worker: 0.5-0.9 cores of encoders,
which the worker's figures then paid for (README: Many sessions per worker). Here each still of
the share is encoded once per users process, with libvpx through PyAV, into a `Segment`: a
keyframe, then the delta frames that hold the still for `hold_s` seconds at `fps`. The rtc SDK's
`EncodedVideoSource` publishes those frames without decoding or encoding them, so the worker
receives and decodes a 5 fps VP8 share as before, while a user costs only packetising.

A still that does not change encodes, after a few frames, into one short delta frame again and
again (every block skipped: libvpx's `static-thresh`); only frames up to that one are encoded,
the rest of the hold repeats it, and the whole segment is decoded once to check that the
repeats leave the picture unchanged (otherwise every frame of the hold is encoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from livekit import rtc

WIDTH, HEIGHT = 1280, 720
# realtime libvpx, every block of an unchanged picture skipped; a keyframe sharp enough to read
ENCODER_OPTIONS = {"deadline": "realtime", "cpu-used": "16", "lag-in-frames": "0",
                   "static-thresh": "100000", "qmin": "2", "qmax": "12"}
BITRATE = 20_000_000  # a ceiling: the quantiser range decides a keyframe's size
CONVERGED_AFTER = 12  # deltas encoded at most before the hold's repeat must have appeared


@dataclass(frozen=True)
class Segment:
    """One still of the share: its keyframe, then the deltas that hold it (often one repeated)."""

    key: bytes
    deltas: tuple[bytes, ...]

    def frames(self) -> list[tuple[bytes, bool]]:
        """(data, is keyframe) in order."""
        return [(self.key, True), *((delta, False) for delta in self.deltas)]


def _av_frame(frame: rtc.VideoFrame) -> av.VideoFrame:
    i420 = frame.convert(rtc.VideoBufferType.I420)
    data = np.frombuffer(i420.data, dtype=np.uint8)
    luma, chroma = WIDTH * HEIGHT, WIDTH * HEIGHT // 4
    picture = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    for plane, start, size in ((0, 0, luma), (1, luma, chroma), (2, luma + chroma, chroma)):
        picture.planes[plane].update(data[start:start + size].tobytes())
    return picture


def _encoder(fps: float) -> av.video.codeccontext.VideoCodecContext:
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base = Fraction(1, round(fps))
    encoder.bit_rate = BITRATE
    encoder.gop_size = 1 << 30  # keyframes only where a segment starts
    encoder.thread_count = 1
    encoder.options = dict(ENCODER_OPTIONS)
    return encoder  # type: ignore[return-value]


def _encode(still: rtc.VideoFrame, count: int, fps: float, stop_when_repeated: bool) -> list[bytes]:
    """The still encoded `count` times from a keyframe; with `stop_when_repeated`, up to the
    first delta equal to the one before it."""
    encoder = _encoder(fps)
    picture = _av_frame(still)
    packets: list[bytes] = []
    for index in range(count):
        picture.pts = index
        picture.pict_type = (av.video.frame.PictureType.I if index == 0
                             else av.video.frame.PictureType.NONE)
        packets += [bytes(packet) for packet in encoder.encode(picture)]
        if stop_when_repeated and len(packets) >= 3 and packets[-1] == packets[-2]:
            return packets
    packets += [bytes(packet) for packet in encoder.encode(None)]
    return packets


def _decoded(frames: list[bytes]) -> list[np.ndarray]:
    decoder = av.CodecContext.create("vp8", "r")
    pictures: list[np.ndarray] = []
    for data in frames:
        pictures += [picture.to_ndarray() for picture in decoder.decode(av.Packet(data))]
    return pictures


def encode_still(still: rtc.VideoFrame, fps: float, hold_s: float) -> Segment:
    """`still` held `hold_s` seconds at `fps`: encoded up to its repeating delta, checked."""
    count = max(1, round(hold_s * fps))
    packets = _encode(still, min(count, CONVERGED_AFTER + 1), fps, stop_when_repeated=True)
    if count > 1 and len(packets) >= 3 and packets[-1] == packets[-2] and len(packets) < count:
        held = packets + [packets[-1]] * (count - len(packets))
        pictures = _decoded(held)
        settled = pictures[len(packets) - 2]
        if len(pictures) == count and all(np.array_equal(settled, p)
                                          for p in pictures[len(packets) - 1:]):
            return Segment(held[0], tuple(held[1:]))
    packets = _encode(still, count, fps, stop_when_repeated=False)[:count]
    return Segment(packets[0], tuple(packets[1:]))


def encode_share(stills: list[rtc.VideoFrame], fps: float, hold_s: float) -> list[Segment]:
    """Each still of a share as a segment of its own (a user may start at any of them)."""
    return [encode_still(still, fps, hold_s) for still in stills]


class EncodedShare:
    """Publishes segments in a loop at `fps` through an `EncodedVideoSource`. A subscriber's
    keyframe request (a late joiner, a lost packet) restarts the current segment, whose first
    frame is a keyframe."""

    def __init__(self, segments: list[Segment], fps: float) -> None:
        self.source = rtc.EncodedVideoSource(WIDTH, HEIGHT)
        self._segments = segments
        self._fps = fps
        self._segment = 0
        self._frame = 0
        self.published = 0
        self.keyframes_requested = 0

    def publish_options(self, source_kind: rtc.TrackSource.ValueType) -> rtc.TrackPublishOptions:
        return rtc.TrackPublishOptions(
            source=source_kind, simulcast=False, video_codec=rtc.VideoCodec.VP8,
            video_encoder=rtc.VideoEncoderBackend.ENCODER_BACKEND_PRE_ENCODED)

    def send_next(self) -> None:
        """The next frame of the loop (a keyframe first when one was asked for)."""
        if self.source.take_feedback().keyframe_requested:
            self.keyframes_requested += 1
            self._frame = 0
        frames = self._segments[self._segment].frames()
        data, key = frames[self._frame]
        self.source.capture_frame(rtc.EncodedVideoFrame(
            data=data, width=WIDTH, height=HEIGHT, codec=rtc.VideoCodec.VP8,
            frame_type=rtc.EncodedFrameType.ENCODED_FRAME_KEY if key
            else rtc.EncodedFrameType.ENCODED_FRAME_DELTA,
            timestamp_us=round(self.published * 1_000_000 / self._fps)))
        self.published += 1
        self._frame += 1
        if self._frame == len(frames):
            self._segment = (self._segment + 1) % len(self._segments)
            self._frame = 0
