//! The strategy as a state machine: windows, the cap, pauses, redeliveries, and inheriting
//! positions from an earlier worker.

use super::*;
use crate::envelope::idempotency_key;

fn tick(pair: &str, price: f64) -> Input {
    Input::Tick {
        pair: pair.into(),
        price,
        at_ms: 1,
    }
}

/// Feeds prices for `pair` with ids `<prefix><nnn>`; returns every trade decided.
fn feed(s: &mut Strategy, pair: &str, prefix: &str, prices: &[f64]) -> Vec<Trade> {
    prices
        .iter()
        .enumerate()
        .flat_map(|(i, p)| s.on_event(&format!("{prefix}{i:03}"), &tick(pair, *p)))
        .collect()
}

fn ramp(from: f64, step: f64, n: usize) -> Vec<f64> {
    (0..n).map(|i| from + step * i as f64).collect()
}

#[test]
fn no_signal_until_the_window_is_full() {
    let mut s = Strategy::new(Params::default());
    // 19 ticks rising 1% in all: not a full window yet.
    assert!(feed(&mut s, "BTC", "a", &ramp(100.0, 1.0 / 18.0, 19)).is_empty());
    // The 20th tick completes it: 100 -> 101.05 is above 0.3%.
    let t = s.on_event("a019", &tick("BTC", 101.05));
    assert_eq!(
        t,
        vec![Trade::Open {
            pair: "BTC".into(),
            direction: Direction::Long,
            event_id: "a019".into()
        }]
    );
}

#[test]
fn a_move_within_the_threshold_is_no_signal() {
    let mut s = Strategy::new(Params::default());
    // 100 -> 100.29 is 0.29%: no signal.
    assert!(feed(&mut s, "BTC", "a", &ramp(100.0, 0.29 / 19.0, 20)).is_empty());
}

#[test]
fn same_direction_holds_a_flip_closes_then_opens() {
    let mut s = Strategy::new(Params::default());
    let up = feed(&mut s, "BTC", "a", &ramp(100.0, 0.1, 25));
    assert_eq!(up.len(), 1, "one open, then holding: {up:?}");
    // Fall hard: the window turns short, closing the long and opening a short.
    let down = feed(&mut s, "BTC", "b", &ramp(102.4, -0.2, 20));
    let kinds: Vec<_> = down
        .iter()
        .map(|t| match t {
            Trade::Open { direction, .. } => format!("open {}", direction.as_str()),
            Trade::Close {
                direction,
                opened_by,
                ..
            } => {
                assert_eq!(opened_by, "a019");
                format!("close {}", direction.as_str())
            }
        })
        .collect();
    assert_eq!(kinds, ["close long", "open short"]);
    // Both trades come from one deciding event and have distinct keys.
    let Trade::Close { event_id, .. } = &down[0] else {
        unreachable!()
    };
    assert_eq!(
        down[0].key(),
        idempotency_key(event_id, "trader", "close:a019")
    );
    assert_eq!(down[1].key(), open_key(event_id));
}

#[test]
fn at_most_three_positions() {
    let mut s = Strategy::new(Params::default());
    let mut opened = 0;
    for pair in ["A", "B", "C", "D"] {
        opened += feed(&mut s, pair, &format!("{pair}-"), &ramp(100.0, 0.1, 20)).len();
    }
    assert_eq!(opened, 3);
    assert_eq!(s.open_positions().len(), 3);
}

#[test]
fn paused_ticks_are_ignored_until_resume() {
    let mut s = Strategy::new(Params::default());
    s.on_event("p", &Input::Pause);
    assert!(s.paused());
    assert!(feed(&mut s, "BTC", "a", &ramp(100.0, 0.1, 30)).is_empty());
    s.on_event("r", &Input::Resume);
    // The paused ticks never entered the window: it takes 20 fresh ones to signal again.
    assert!(feed(&mut s, "BTC", "b", &ramp(100.0, 0.1, 19)).is_empty());
    assert_eq!(s.on_event("b019", &tick("BTC", 102.0)).len(), 1);
}

#[test]
fn a_redelivered_tick_is_not_windowed_twice() {
    let mut a = Strategy::new(Params::default());
    let mut b = Strategy::new(Params::default());
    let prices = ramp(100.0, 0.02, 20);
    let mut with_dups = vec![];
    for (i, p) in prices.iter().enumerate() {
        let id = format!("a{i:03}");
        with_dups.extend(a.on_event(&id, &tick("BTC", *p)));
        // Every tick arrives twice, and an old one again.
        with_dups.extend(a.on_event(&id, &tick("BTC", *p)));
        with_dups.extend(a.on_event("a000", &tick("BTC", 1.0)));
    }
    let once = feed(&mut b, "BTC", "a", &prices);
    assert_eq!(with_dups, once);
}

#[test]
fn a_fresh_strategy_inheriting_the_final_positions_replays_the_same_trades() {
    // The first worker's whole history: opens, holds, flips, on two pairs.
    let mut first = Strategy::new(Params::default());
    let mut history: Vec<(String, &str, f64)> = vec![];
    let mut n = 0;
    let mut push = |pair: &'static str, prices: Vec<f64>| {
        for p in prices {
            history.push((format!("e{n:04}"), pair, p));
            n += 1;
        }
    };
    push("A", ramp(100.0, 0.1, 25));
    push("B", ramp(50.0, -0.05, 22));
    push("A", ramp(102.4, -0.2, 20));
    push("B", ramp(48.9, 0.1, 20));
    let run = |s: &mut Strategy| -> Vec<Trade> {
        history
            .iter()
            .flat_map(|(id, pair, p)| s.on_event(id, &tick(pair, *p)))
            .collect()
    };
    let decided = run(&mut first);
    assert!(decided.len() >= 6, "{decided:?}");
    // A fresh worker loads what the API still holds, then gets the whole stream again.
    let mut fresh = Strategy::new(Params::default());
    for (pair, held) in &first.open {
        fresh.inherit(pair, held.direction, &held.opened_by);
    }
    assert!(fresh.open_positions().is_empty(), "not reached yet");
    assert_eq!(run(&mut fresh), decided, "same trades, so the same keys");
    assert_eq!(fresh.open_positions(), first.open_positions());
    assert!(fresh.inherited.is_empty());
}

#[test]
fn a_standby_closes_an_inherited_position_with_the_key_the_first_would_have_used() {
    let mut first = Strategy::new(Params::default());
    feed(&mut first, "A", "a", &ramp(100.0, 0.1, 25));
    let mut standby = Strategy::new(Params::default());
    for (pair, held) in &first.open {
        standby.inherit(pair, held.direction, &held.opened_by);
    }
    // Only the ticks after the takeover: once its window is full, they flip the long, and the
    // close names the position by the event that opened it, as the first worker's would.
    let b = feed(&mut standby, "A", "b", &ramp(102.4, -0.2, 20));
    assert_eq!(
        b,
        vec![
            Trade::Close {
                pair: "A".into(),
                direction: Direction::Long,
                event_id: "b019".into(),
                opened_by: "a019".into(),
            },
            Trade::Open {
                pair: "A".into(),
                direction: Direction::Short,
                event_id: "b019".into(),
            },
        ]
    );
    assert_eq!(b[0].key(), idempotency_key("b019", "trader", "close:a019"));
    // And it counts towards the cap meanwhile.
    let mut capped = Strategy::new(Params::default());
    capped.inherit("A", Direction::Long, "a019");
    capped.inherit("B", Direction::Long, "a019");
    capped.inherit("C", Direction::Short, "a018");
    assert!(feed(&mut capped, "D", "b", &ramp(100.0, 0.1, 25)).is_empty());
    assert_eq!(capped.open_positions().len(), 3);
}
