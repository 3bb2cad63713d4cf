"""What the page tells the SFU about the tiles it draws (web/js/view.js, `render_sizes`): the
decision when to send, in the served module with no media; the pure functions that turn a tile's
box into device pixels and the `tracks` message into the sizes by mid."""

from __future__ import annotations

from tests.fixtures.browser import OpenTab
from tests.fixtures.servers import RunningNode


async def test_sizes_are_device_pixels_and_zero_when_not_seen(
    dev_node: RunningNode, chromium: OpenTab
) -> None:
    tab = await chromium(f"{dev_node.url}/")
    got = await tab.page.evaluate(
        """import('/js/view.js').then((v) => ({
            plain: v.renderSize({ width: 320, height: 180 }),
            retina: v.renderSize({ width: 320.4, height: 180.3, ratio: 2 }),
            zoomed: v.renderSize({ width: 333.3, height: 187.5, ratio: 1.5 }),
            offScreen: v.renderSize({ width: 320, height: 180, intersecting: false }),
            pageHidden: v.renderSize({ width: 320, height: 180, pageVisible: false }),
            collapsed: v.renderSize({ width: 320, height: 0 }),
            byMid: v.sizesOfTracks(
              [
                { mid: '1', participant_id: 'a', kind: 'audio', source: 'camera' },
                { mid: '2', participant_id: 'a', kind: 'video', source: 'camera' },
                { mid: '3', participant_id: 'a', kind: 'video', source: 'screen' },
                { mid: '5', participant_id: 'b', kind: 'video', source: 'camera' },
              ],
              new Map([['a camera', [1280, 720]], ['b camera', [0, 0]]]),
            ),
            same: v.sameSizes({ 2: [1, 2] }, { 2: [1, 2] }),
            otherSize: v.sameSizes({ 2: [1, 2] }, { 2: [1, 3] }),
            otherMid: v.sameSizes({ 2: [1, 2] }, { 3: [1, 2] }),
            fewer: v.sameSizes({ 2: [1, 2], 3: [0, 0] }, { 2: [1, 2] }),
            none: v.sameSizes(null, { 2: [1, 2] }),
        }))"""
    )
    assert got["plain"] == [320, 180]
    assert got["retina"] == [641, 361]
    assert got["zoomed"] == [500, 281]
    assert got["offScreen"] == [0, 0]
    assert got["pageHidden"] == [0, 0]
    assert got["collapsed"] == [0, 0]
    # Video only; a screen share no tile shows yet is not shown (the SFU sends it nothing).
    assert got["byMid"] == {"2": [1280, 720], "3": [0, 0], "5": [0, 0]}
    assert [got["same"], got["otherSize"], got["otherMid"], got["fewer"], got["none"]] == [
        True,
        False,
        False,
        False,
        False,
    ]


# Each scenario: measurements at times (ms), then `due` asked at times; what was sent when.
REPORT = """
import('/js/view.js').then((v) => {
  const run = (steps) => {
    const report = new v.RenderSizeReport();
    const sent = [];
    for (const [now, what, sizes] of steps) {
      if (what === 'measure') report.measure(now, sizes);
      else if (what === 'forget') report.forget(now);
      const { send, wakeAt } = report.due(now);
      if (send) sent.push([now, send]);
      else if (wakeAt !== null) sent.push([now, 'wake', wakeAt]);
    }
    return sent;
  };
  const big = { 2: [1280, 720] };
  const small = { 2: [320, 180] };
  const medium = { 2: [640, 360] };
  const drag = [];
  for (let t = 0; t <= 1500; t += 16) drag.push([t, 'measure', { 2: [1000 + t, 562] }]);
  drag.push([1800, 'measure', { 2: [2500, 562] }]);
  drag.push([2100, 'due']);
  return {
    settles: run([[0, 'measure', big], [100, 'due'], [250, 'due'], [300, 'measure', big]]),
    burst: run([
      [0, 'measure', big], [250, 'due'], [300, 'measure', small], [400, 'measure', medium],
      [560, 'due'], [700, 'due'],
    ]),
    backAgain: run([[0, 'measure', big], [250, 'due'], [300, 'measure', small],
                    [400, 'measure', big], [700, 'due']]),
    drag: run(drag).filter((s) => s[1] !== 'wake'),
    resumed: run([[0, 'measure', big], [250, 'due'], [5000, 'forget'], [5100, 'measure', big],
                  [5250, 'due']]),
    nothingShown: run([[0, 'measure', {}], [500, 'due']]),
  };
})
"""


async def test_sizes_are_sent_on_change_settled_and_spaced(
    dev_node: RunningNode, chromium: OpenTab
) -> None:
    tab = await chromium(f"{dev_node.url}/")
    got = await tab.page.evaluate(REPORT)
    big, medium = {"2": [1280, 720]}, {"2": [640, 360]}
    # The first size is sent once it held for 250 ms; the same size measured again sends nothing.
    assert got["settles"] == [[0, "wake", 250], [100, "wake", 250], [250, big]]
    # Two changes within the settling time: the last one, once it settled.
    assert got["burst"] == [
        [0, "wake", 250],
        [250, big],
        [300, "wake", 550],
        [400, "wake", 650],
        [560, "wake", 650],
        [700, medium],
    ]
    # ...and when the change went back to what was sent, nothing at all.
    assert got["backAgain"] == [[0, "wake", 250], [250, big], [300, "wake", 550]]
    # A window dragged for 1.5 s (a new size every frame): one message a second at most while it
    # moves, then the final size once it stops; not one per frame.
    assert [when for when, *_ in got["drag"]] == [1008, 2100]
    assert got["drag"][-1][1] == {"2": [2500, 562]}
    # After a resume (the server may know nothing) everything is sent again, unchanged or not.
    assert got["resumed"] == [[0, "wake", 250], [250, big], [5000, big]]
    # No video shown by anyone: nothing to say.
    assert got["nothingShown"] == []
