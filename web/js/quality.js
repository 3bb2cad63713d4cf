// Connection quality, rated good, fair or poor from WebRTC statistics: recent packet loss and
// round-trip time. For another participant: the loss on their media as it reaches me, and my
// round trip to the SFU; for me: the loss the SFU reports on what I send (RTCP receiver reports)
// and my round trip to it.

/** Where a connection stops being good, and where it becomes poor. Interactive speech suffers
 * past about 150 ms one way (ITU-T G.114), and Opus conceals a few per cent of loss. */
export const THRESHOLDS = {
  fair: { loss: 0.03, rttMs: 300 },
  poor: { loss: 0.1, rttMs: 700 },
};

/** "good", "fair" or "poor" for a loss fraction (0..1) and a round-trip time in ms; null when
 * neither is known. */
export function rateConnection({ loss = null, rttMs = null }) {
  if (loss === null && rttMs === null) return null;
  const over = (level) =>
    (loss !== null && loss >= THRESHOLDS[level].loss) ||
    (rttMs !== null && rttMs >= THRESHOLDS[level].rttMs);
  if (over("poor")) return "poor";
  if (over("fair")) return "fair";
  return "good";
}

/** Packet loss over the last few samples of cumulative received/lost counters. */
export class LossWindow {
  constructor(samples = 10) {
    this.samples = samples;
    this.history = [];
  }

  /** Add the counters as they are now. Counters that went back (a transceiver now carrying
   * someone else) start the window again. */
  add(received, lost) {
    const last = this.history[this.history.length - 1];
    if (last && received < last.received) this.history = [];
    this.history.push({ received, lost });
    if (this.history.length > this.samples) this.history.shift();
  }

  /** Lost packets over packets expected in the window; null before two samples or with no
   * packets in between (muted, or nothing sent). */
  fraction() {
    if (this.history.length < 2) return null;
    const first = this.history[0];
    const last = this.history[this.history.length - 1];
    const received = last.received - first.received;
    const lost = Math.max(0, last.lost - first.lost);
    return received + lost > 0 ? lost / (received + lost) : null;
  }
}
