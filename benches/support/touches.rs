//! An engine loaded with N live touches, and batches of further events (the `state` and
//! `checkpoint` benches).

use attrib::engine::{Engine, EngineConfig};
use attrib::model::{Currency, Event, Item, Purchase, Touch, TouchKind};

use super::CountOutput;

pub const TOUCHES_PER_SHOPPER: u64 = 5;
const PRODUCTS: u64 = 10_000;
const CREATORS: u64 = 2_000;
/// 2026-11-01T00:00:00Z.
pub const START_MS: i64 = 1_793_491_200_000;

fn click(i: u64, user: u64, ts: i64, prefix: &str) -> Event {
    Event::Touch(Touch {
        kind: TouchKind::Click,
        event_id: format!("{prefix}-{i}").into(),
        ts,
        user_id: format!("u-{user}").into(),
        creator_id: format!("c-{}", i % CREATORS).into(),
        product_id: Some(format!("p-{}", user % PRODUCTS).into()),
        surface: Some("video".into()),
    })
}

/// Loads `n` live touches into `engine` (synthetic clicks, 5 per shopper, distinct event
/// ids, 1 ms apart from [`START_MS`]); the watermark never moves.
pub fn load_touches(engine: &mut Engine, n: u64) {
    let shoppers = (n / TOUCHES_PER_SHOPPER).max(1);
    let mut out = CountOutput::default();
    for i in 0..n {
        engine.process(&click(i, i % shoppers, START_MS + i as i64, "k"), 0, &mut out);
    }
}

/// An engine holding `n` live touches.
pub fn loaded_engine(config: &EngineConfig, n: u64) -> Engine {
    let mut engine = Engine::new(config.clone());
    load_touches(&mut engine, n);
    assert_eq!(engine.live_touches() as u64, n);
    engine
}

/// splitmix64: a cheap, seeded stream of shopper picks.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Events `from..from + len` after `n` loaded touches, in event time: 92 % clicks on
/// random existing shoppers, 8 % one-item purchases by random existing shoppers of a
/// product they touched. Consecutive ranges have distinct ids and later times.
pub fn batch(n: u64, from: u64, len: u64) -> Vec<Event> {
    let shoppers = (n / TOUCHES_PER_SHOPPER).max(1);
    let mut rng = 7 + from;
    (from..from + len)
        .map(|j| {
            let user = next(&mut rng) % shoppers;
            let ts = START_MS + (n + j) as i64;
            if next(&mut rng) % 1000 < 80 {
                Event::Purchase(Purchase {
                    event_id: format!("o-{j}").into(),
                    ts,
                    user_id: format!("u-{user}").into(),
                    order_id: format!("ord-{j}").into(),
                    currency: Currency::parse("USD").expect("valid currency"),
                    items: vec![Item {
                        product_id: format!("p-{}", user % PRODUCTS).into(),
                        quantity: 1,
                        unit_price: 1999,
                        category: None,
                    }],
                })
            } else {
                click(j, user, ts, "b")
            }
        })
        .collect()
}
