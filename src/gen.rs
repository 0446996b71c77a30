//! Seeded synthetic workload for `attrib gen`: JSONL view, click, purchase
//! and refund events in the formats of SPEC §1, shaped like a creator-commerce
//! stream, for tests and benchmarks.
//!
//! What it generates:
//!
//! - Shoppers, creators and products are drawn from Zipf distributions
//!   (exponent [`ZIPF_EXPONENT`]), so a few shoppers, creators and products are
//!   hot. Each creator promotes a fixed catalogue of products and owns some
//!   content (`video`, `live`, `showcase` or `link`).
//! - Shoppers have sessions: they view (~70 %) and click (~22 %) a creator's
//!   content, about 15 % of touches are storefront touches without
//!   `product_id`, and purchases (~8 % of events) mostly buy products the
//!   shopper touched in the session, sometimes unrelated ones. About 1 % of
//!   shoppers are creators themselves (`user_id` is a creator id), which
//!   exercises the self-attribution rule.
//! - Purchases have 1–3 items, quantity 1–3, `unit_price` 99..=19999 minor
//!   units, a category (beauty, fashion, home, tech, food; a few products have
//!   none) and a currency (mostly USD, some EUR and GBP). The `refunds`
//!   fraction of purchases is refunded 1 hour to 30 days later in event time,
//!   as a whole order or part of one line.
//! - About 2 % of events carry `ts` as an RFC 3339 string
//!   (`2026-11-01T00:00:01.234Z`) instead of integer milliseconds.
//!
//! Guarantees:
//!
//! - **Exact size**: exactly `events` lines, duplicates and invalid lines
//!   included, each passed to the sink without a trailing newline and never
//!   containing one.
//! - **Reproducible**: the same options give byte-identical output on every
//!   platform. All randomness comes from one `ChaCha8Rng` seeded with `seed`
//!   and consumed in a fixed order; integers are drawn with our own unbiased
//!   range reduction (no `usize`); the Zipf sampler uses only IEEE-754 basic
//!   arithmetic (`+ - * /`, `floor`, `round`), never the platform `ln`,
//!   `exp` or `powf`, whose last bit differs between C libraries; no float is
//!   ever formatted; no hash-map order is observed.
//! - **Bounded disorder**: each event is given an emission key `ts + d` with
//!   `d` uniform in `[0, disorder_ms]`, and lines come out sorted by
//!   `(key, sequence)`. So every line's `ts` is at most `disorder_ms` behind
//!   the largest `ts` emitted before it (exactly, refunds and duplicates
//!   included); with `disorder_ms = 0` the output is sorted by `ts`.
//! - **Duplicates**: with probability `duplicates` an event is emitted a
//!   second time, byte-identical, later, and still within the disorder bound.
//! - **Invalid lines**: with probability `invalid` an event is replaced by an
//!   invalid line of one of many kinds (not JSON, truncated JSON, missing or
//!   mistyped fields, quantity 0, negative price, bad currency, unknown type,
//!   float or unparsable `ts`, empty items, over-long id, `quantity *
//!   unit_price` overflow, ...). Its sink kind is [`GenKind::Invalid`].
//! - **Bounded memory**: the output is never materialised. Pending events wait
//!   in a queue ordered by emission key (per-millisecond buckets covering the
//!   next `disorder_ms`): about `events_per_sec * disorder_ms / 1000` of them.
//!   Refunds wait in a min-heap by event time as 48-byte plans (at most
//!   `refunds` × ~8 % of the events of the last 30 days of event time), and
//!   fixed tables take a few MiB. Nothing else grows with `events`: 50 million
//!   events at the defaults ran in 11 MiB of resident memory.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;

// Through rand_chacha, so the traits always match the generator whatever `rand`
// version the rest of the crate uses.
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// 2026-11-01T00:00:00Z in milliseconds since the Unix epoch.
pub const DEFAULT_START_MS: i64 = 1_793_491_200_000;

/// Zipf exponent for shoppers, creators and products.
pub const ZIPF_EXPONENT: f64 = 1.1;

/// Options of [`generate`]; see [`GenOptions::default`] for the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GenOptions {
    /// Number of lines to write, duplicates and invalid lines included.
    pub events: u64,
    /// Seed of the random generator; equal options give equal output.
    pub seed: u64,
    /// Largest amount (ms) by which an event's `ts` may lag behind the largest
    /// `ts` emitted before it. 0 gives output sorted by `ts`.
    pub disorder_ms: u64,
    /// Probability (0..=1) that an event is emitted a second time.
    pub duplicates: f64,
    /// Probability (0..=1) that an event is replaced by an invalid line.
    pub invalid: f64,
    /// Fraction (0..=1) of purchases that are later refunded.
    pub refunds: f64,
    /// Number of distinct shoppers (`u-1` ..; about 1 % of them are written
    /// as the creator id `c-N` they also are).
    pub users: u32,
    /// Number of distinct creators (`c-1` ..).
    pub creators: u32,
    /// Number of distinct products (`p-1` ..).
    pub products: u32,
    /// Event time (ms since the Unix epoch) at which the clock starts; the
    /// first event is at or just after it.
    pub start_ms: i64,
    /// Average rate of events per second of event time (touches, purchases
    /// and their duplicates; refunds come on top).
    pub events_per_sec: f64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            events: 100_000,
            seed: 42,
            disorder_ms: 2_000,
            duplicates: 0.0,
            invalid: 0.0,
            refunds: 0.05,
            users: 50_000,
            creators: 2_000,
            products: 10_000,
            start_ms: DEFAULT_START_MS,
            events_per_sec: 1_000.0,
        }
    }
}

/// What the generator meant a line to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenKind {
    /// A valid `view` event.
    View,
    /// A valid `click` event.
    Click,
    /// A valid `purchase` event.
    Purchase,
    /// A valid `refund` event.
    Refund,
    /// A line that breaks SPEC §1 and must be dead-lettered.
    Invalid,
}

impl GenKind {
    /// All kinds, in the order of [`GenStats::by_kind`].
    pub const ALL: [GenKind; 5] = [GenKind::View, GenKind::Click, GenKind::Purchase, GenKind::Refund, GenKind::Invalid];

    /// Index of this kind in [`GenStats::by_kind`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name (`view`, ..., `invalid`), for summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            GenKind::View => "view",
            GenKind::Click => "click",
            GenKind::Purchase => "purchase",
            GenKind::Refund => "refund",
            GenKind::Invalid => "invalid",
        }
    }

    /// Prefix of the `event_id`s of this kind; the ids stay unique across kinds
    /// anyway because they share one counter.
    fn id_prefix(self) -> &'static [u8] {
        match self {
            GenKind::View => b"v-",
            GenKind::Click => b"k-",
            GenKind::Purchase => b"o-",
            GenKind::Refund => b"r-",
            GenKind::Invalid => b"x-",
        }
    }
}

/// Counts of the lines written by [`generate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Lines per kind, indexed by [`GenKind::index`] (duplicates included).
    pub by_kind: [u64; 5],
    /// All lines written; equals `GenOptions::events` on success.
    pub total: u64,
}

/// Writes exactly `opts.events` lines (each without trailing newline) to `sink`, in emission order.
///
/// Fails with [`io::ErrorKind::InvalidInput`] on unusable options (zero
/// users, creators or products; a probability outside 0..=1; a rate outside
/// 0.001..=1e9 events/s; `disorder_ms` over 2^40; more than 10 million events
/// in flight, i.e. `events_per_sec * disorder_ms / 1000`) and with the first
/// error the sink returns.
pub fn generate<F: FnMut(GenKind, &[u8]) -> io::Result<()>>(opts: &GenOptions, mut sink: F) -> io::Result<GenStats> {
    validate(opts)?;
    let mut stats = GenStats::default();
    if opts.events == 0 {
        return Ok(stats);
    }
    let mut g = Generator::new(opts);
    loop {
        let now = g.step();
        // Every event generated from now on has ts >= now, so its key is >= now
        // and it gets a larger sequence number: everything keyed <= now can go.
        while let Some(ev) = g.queue.pop_ready(now) {
            render(&mut g.buf, &ev);
            let kind = if ev.flaw == Flaw::None { ev.kind } else { GenKind::Invalid };
            sink(kind, &g.buf)?;
            stats.by_kind[kind.index()] += 1;
            stats.total += 1;
            if stats.total == opts.events {
                return Ok(stats);
            }
        }
    }
}

fn validate(opts: &GenOptions) -> io::Result<()> {
    let bad = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
    if opts.users == 0 || opts.creators == 0 || opts.products == 0 {
        return bad("users, creators and products must be at least 1");
    }
    for (name, p) in [("duplicates", opts.duplicates), ("invalid", opts.invalid), ("refunds", opts.refunds)] {
        if !(0.0..=1.0).contains(&p) {
            return bad(&format!("{name} must be a probability in 0..=1"));
        }
    }
    // The bounds keep the nanosecond clock arithmetic far from overflow.
    if !(1e-3..=1e9).contains(&opts.events_per_sec) {
        return bad("events_per_sec must be in 0.001..=1e9");
    }
    if opts.disorder_ms > 1 << 40 {
        return bad("disorder_ms must be at most 2^40");
    }
    // No line can be written before the clock passes its key, so about this
    // many events are held at once (~100 bytes each).
    if opts.events_per_sec * opts.disorder_ms as f64 / 1000.0 > MAX_IN_FLIGHT {
        return bad("events_per_sec * disorder_ms / 1000 (events held in memory) must be at most 10 million");
    }
    Ok(())
}

/// Cap on `events_per_sec * disorder_ms / 1000`, about 1 GiB of queue.
const MAX_IN_FLIGHT: f64 = 1e7;

// ---------------------------------------------------------------------------
// Shape of the workload. Percentages are out of 100, mixes out of 1000.

/// Concurrent shopper sessions. Sessions interleave, so with ~5 touches each a
/// session spans roughly `SESSION_POOL * 5` events of event time.
const SESSION_POOL: usize = 2048;
/// Base-event mix out of 1000: purchases, then clicks, the rest views.
const MIX_PURCHASE: u64 = 80;
const MIX_CLICK: u64 = 225;
/// Chance (%) that a touch starts a new session (so ~5 touches per session).
const PCT_NEW_SESSION: u64 = 20;
/// Chance (%) that a session turns to another creator.
const PCT_SWITCH_CREATOR: u64 = 15;
/// Chance (%) that a touch names a product (else storefront touch).
const PCT_PRODUCT_TOUCH: u64 = 85;
const PCT_HAS_CONTENT: u64 = 90;
const PCT_HAS_SURFACE: u64 = 95;
/// Chance (%) that a purchase is not tied to any session.
const PCT_UNRELATED_PURCHASE: u64 = 5;
/// Chance (%) that an item of a session purchase was not touched.
const PCT_UNTOUCHED_ITEM: u64 = 10;
/// Chance (%) that a session ends with its purchase.
const PCT_END_AFTER_PURCHASE: u64 = 60;
/// Chance (%) that a self-creator shopper's session is on their own content.
const PCT_OWN_CONTENT: u64 = 30;
/// Chance (%) that `ts` is written as an RFC 3339 string.
const PCT_RFC_TS: u64 = 2;
/// Chance (%) that a refund covers the whole order (else part of one line).
const PCT_WHOLE_REFUND: u64 = 50;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

const SURFACES: [&[u8]; 4] = [b"video", b"live", b"showcase", b"link"];
const CATEGORIES: [&[u8]; 5] = [b"beauty", b"fashion", b"home", b"tech", b"food"];
const CURRENCIES: [&[u8]; 3] = [b"USD", b"EUR", b"GBP"];

// Salts that separate the per-entity attribute hashes from each other.
const SALT_SELF: u64 = 0x5e1f;
const SALT_CURRENCY: u64 = 0xc0e4;
const SALT_CATALOGUE: u64 = 0xca7a;
const SALT_CATALOGUE_SIZE: u64 = 0xca75;
const SALT_CONTENT: u64 = 0xc047;
const SALT_SURFACE: u64 = 0x5fac;
const SALT_PRICE: u64 = 0x941c;
const SALT_CATEGORY: u64 = 0xca7e;

// ---------------------------------------------------------------------------
// Events in flight.

/// A way of breaking SPEC §1, chosen when an event is generated so that its
/// duplicate is byte-identical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    None,
    NotJson,
    Truncated,
    MissingUser,
    UnknownType,
    FloatTs,
    BadTsString,
    EmptyEventId,
    UserIdNumber,
    LongId,
    MissingCreator,
    QtyZero,
    NegativePrice,
    BadCurrency,
    EmptyItems,
    Overflow,
    MissingOrder,
}

const COMMON_FLAWS: [Flaw; 9] = [
    Flaw::NotJson,
    Flaw::Truncated,
    Flaw::MissingUser,
    Flaw::UnknownType,
    Flaw::FloatTs,
    Flaw::BadTsString,
    Flaw::EmptyEventId,
    Flaw::UserIdNumber,
    Flaw::LongId,
];
const TOUCH_FLAWS: [Flaw; 1] = [Flaw::MissingCreator];
const PURCHASE_FLAWS: [Flaw; 6] =
    [Flaw::QtyZero, Flaw::NegativePrice, Flaw::BadCurrency, Flaw::EmptyItems, Flaw::Overflow, Flaw::MissingOrder];
const REFUND_FLAWS: [Flaw; 1] = [Flaw::MissingOrder];

/// A shopper as written in `user_id`: `u-N`, or `c-N` for a shopper who is
/// also creator `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Shopper {
    num: u32,
    is_creator: bool,
}

#[derive(Clone, Copy, Debug)]
struct Item {
    product: u32,
    qty: u8,
    price: u32,
    /// Index into `CATEGORIES`, or `None` for an uncategorised product.
    category: Option<u8>,
}

#[derive(Clone, Copy, Debug)]
enum Body {
    Touch {
        creator: u32,
        product: Option<u32>,
        /// (creator, content number); rendered as `ct-C.N`.
        content: Option<u32>,
        surface: Option<u8>,
    },
    Purchase {
        order: u64,
        currency: u8,
        len: u8,
        items: [Item; 3],
    },
    Refund {
        order: u64,
        /// `None` refunds the whole order.
        line: Option<(u32, u8)>,
    },
}

/// Everything needed to render one line; `Copy` so a duplicate is a copy.
#[derive(Clone, Copy, Debug)]
struct Ev {
    ts: i64,
    id: u64,
    kind: GenKind,
    user: Shopper,
    rfc_ts: bool,
    flaw: Flaw,
    body: Body,
}

/// A refund waiting for the clock to reach its `ts`; ordered by (ts, id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DueRefund {
    ts: i64,
    id: u64,
    user: Shopper,
    order: u64,
    /// (product, quantity), or `None` for the whole order.
    line: Option<(u32, u8)>,
}

/// A shopper's browsing session: what it touched, so a purchase can buy it.
#[derive(Clone, Copy, Debug)]
struct Session {
    user: Shopper,
    /// Shopper rank, which keys per-shopper attributes such as currency.
    rank: u32,
    creator: u32,
    touched: [u32; 6],
    touched_len: u8,
    touched_next: u8,
}

struct Generator {
    rng: ChaCha8Rng,
    seed: u64,
    creators_n: u32,
    users: Zipf,
    creators: Zipf,
    products: Zipf,
    pool: Vec<Session>,
    queue: Queue,
    /// Refunds planned at purchase time, by (ts, id), in 48 bytes each.
    refunds_due: BinaryHeap<Reverse<DueRefund>>,
    next_id: u64,
    next_order: u64,
    start_ms: i64,
    /// Event time since `start_ms`; u128 so that no rate and length of run can
    /// overflow it.
    clock_ns: u128,
    /// Gaps are uniform in `0..gap_span` ns.
    gap_span: u64,
    disorder: i64,
    p_dup: Prob,
    p_invalid: Prob,
    p_refund: Prob,
    buf: Vec<u8>,
}

impl Generator {
    fn new(opts: &GenOptions) -> Self {
        // Duplicates are extra lines on the same clock, so stretch the gaps to
        // keep lines per second of event time at `events_per_sec`.
        let mean_ns = (1e9 / opts.events_per_sec * (1.0 + opts.duplicates)).round();
        let gap_span = (mean_ns as u64).max(1) * 2 + 1;
        Generator {
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            seed: opts.seed,
            creators_n: opts.creators,
            users: Zipf::new(u64::from(opts.users), ZIPF_EXPONENT),
            creators: Zipf::new(u64::from(opts.creators), ZIPF_EXPONENT),
            products: Zipf::new(u64::from(opts.products), ZIPF_EXPONENT),
            pool: Vec::with_capacity(SESSION_POOL),
            queue: Queue::new(opts.start_ms, opts.disorder_ms),
            refunds_due: BinaryHeap::new(),
            next_id: 1,
            next_order: 1,
            start_ms: opts.start_ms,
            clock_ns: 0,
            gap_span,
            // validate() caps disorder_ms at 2^40, so this cannot truncate.
            disorder: opts.disorder_ms as i64,
            p_dup: Prob::new(opts.duplicates),
            p_invalid: Prob::new(opts.invalid),
            p_refund: Prob::new(opts.refunds),
            buf: Vec::with_capacity(1024),
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        below(&mut self.rng, n)
    }

    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    /// Generates one touch or purchase at the next clock tick and returns its
    /// event time.
    fn step(&mut self) -> i64 {
        let gap = self.below(self.gap_span);
        self.clock_ns += u128::from(gap);
        // Saturating: should ts ever pin at i64::MAX, keys pin there too and
        // everything still drains.
        let ms = i64::try_from(self.clock_ns / 1_000_000).unwrap_or(i64::MAX);
        let ts = self.start_ms.saturating_add(ms);
        // Refunds due by now enter the queue now, not when planned, so the
        // queue holds only the next `disorder_ms` of events. Their ts is above
        // the previous clock reading (else they would have been due then), so
        // their keys are valid for the queue.
        while let Some(Reverse(r)) = self.refunds_due.peek() {
            if r.ts > ts {
                break;
            }
            let r = *r;
            self.refunds_due.pop();
            self.schedule(Ev {
                ts: r.ts,
                id: r.id,
                kind: GenKind::Refund,
                user: r.user,
                rfc_ts: false,
                flaw: Flaw::None,
                body: Body::Refund { order: r.order, line: r.line },
            });
        }
        let r = self.below(1000);
        if r < MIX_PURCHASE {
            self.purchase(ts);
        } else {
            self.touch(ts, r < MIX_PURCHASE + MIX_CLICK);
        }
        ts
    }

    fn shopper(&mut self) -> (Shopper, u32) {
        let rank = self.users.sample(&mut self.rng);
        let h = mix(self.seed ^ SALT_SELF, u64::from(rank));
        let user = if h.is_multiple_of(100) {
            Shopper { num: ((h >> 32) % u64::from(self.creators_n)) as u32 + 1, is_creator: true }
        } else {
            Shopper { num: rank, is_creator: false }
        };
        (user, rank)
    }

    fn new_session(&mut self) -> Session {
        let (user, rank) = self.shopper();
        let creator =
            if user.is_creator && self.pct(PCT_OWN_CONTENT) { user.num } else { self.creators.sample(&mut self.rng) };
        Session { user, rank, creator, touched: [0; 6], touched_len: 0, touched_next: 0 }
    }

    fn touch(&mut self, ts: i64, click: bool) {
        let idx = if self.pool.len() < SESSION_POOL {
            let s = self.new_session();
            self.pool.push(s);
            self.pool.len() - 1
        } else if self.pct(PCT_NEW_SESSION) {
            // The replaced session simply ends without a purchase.
            let i = self.below(self.pool.len() as u64) as usize;
            self.pool[i] = self.new_session();
            i
        } else {
            let i = self.below(self.pool.len() as u64) as usize;
            if self.pct(PCT_SWITCH_CREATOR) {
                self.pool[i].creator = self.creators.sample(&mut self.rng);
            }
            i
        };
        let Session { user, creator, .. } = self.pool[idx];
        let product = if self.pct(PCT_PRODUCT_TOUCH) {
            let p = self.catalogue_pick(creator);
            let s = &mut self.pool[idx];
            s.touched[usize::from(s.touched_next)] = p;
            s.touched_next = (s.touched_next + 1) % s.touched.len() as u8;
            s.touched_len = (s.touched_len + 1).min(s.touched.len() as u8);
            Some(p)
        } else {
            None
        };
        let content = if self.pct(PCT_HAS_CONTENT) {
            let count = 1 + mix(self.seed ^ SALT_CONTENT, u64::from(creator)) % 40;
            Some(self.below(count) as u32 + 1)
        } else {
            None
        };
        let surface = if !self.pct(PCT_HAS_SURFACE) {
            None
        } else if let Some(n) = content {
            // A piece of content always lives on the same surface.
            let h = mix(self.seed ^ SALT_SURFACE, u64::from(creator) << 32 | u64::from(n)) % 100;
            Some(match h {
                0..=54 => 0,
                55..=69 => 1,
                70..=89 => 2,
                _ => 3,
            })
        } else {
            Some(self.below(SURFACES.len() as u64) as u8)
        };
        let id = self.take_id();
        self.schedule(Ev {
            ts,
            id,
            kind: if click { GenKind::Click } else { GenKind::View },
            user,
            rfc_ts: false,
            flaw: Flaw::None,
            body: Body::Touch { creator, product, content, surface },
        });
    }

    /// A product from the creator's catalogue, favouring its first entries.
    fn catalogue_pick(&mut self, creator: u32) -> u32 {
        let size = 4 + mix(self.seed ^ SALT_CATALOGUE_SIZE, u64::from(creator)) % 21;
        let j = self.below(size).min(self.below(size));
        // The catalogue is a pure function of (seed, creator, j), so it needs no
        // memory whatever the number of creators.
        let mut src = SplitMix(mix(self.seed ^ SALT_CATALOGUE, u64::from(creator) << 32 | j));
        self.products.sample(&mut src)
    }

    fn purchase(&mut self, ts: i64) {
        let mut items = [Item { product: 0, qty: 0, price: 0, category: None }; 3];
        let len = match self.below(100) {
            0..=59 => 1,
            60..=87 => 2,
            _ => 3,
        };
        let (user, rank) = if self.pool.is_empty() || self.pct(PCT_UNRELATED_PURCHASE) {
            for item in &mut items[..len] {
                item.product = self.products.sample(&mut self.rng);
            }
            self.shopper()
        } else {
            let si = self.below(self.pool.len() as u64) as usize;
            let s = self.pool[si];
            for i in 0..len {
                // A few tries for distinct lines; a repeated product is legal
                // and exercises the "lines in item order" refund rule.
                for _ in 0..3 {
                    let p = if s.touched_len > 0 && !self.pct(PCT_UNTOUCHED_ITEM) {
                        s.touched[self.below(u64::from(s.touched_len)) as usize]
                    } else if self.pct(50) {
                        self.catalogue_pick(s.creator)
                    } else {
                        self.products.sample(&mut self.rng)
                    };
                    items[i].product = p;
                    if !items[..i].iter().any(|it| it.product == p) {
                        break;
                    }
                }
            }
            if self.pct(PCT_END_AFTER_PURCHASE) {
                self.pool.swap_remove(si);
            }
            (s.user, s.rank)
        };
        for item in &mut items[..len] {
            item.qty = match below(&mut self.rng, 100) {
                0..=74 => 1,
                75..=92 => 2,
                _ => 3,
            };
            let p = u64::from(item.product);
            // Prices are per product, skewed towards cheap, and end in 9.
            let a = mix(self.seed ^ SALT_PRICE, p);
            let cents = 99 + ((a % 19_901).min((a >> 32) % 19_901)) as u32;
            item.price = cents / 10 * 10 + 9;
            let c = mix(self.seed ^ SALT_CATEGORY, p) % 100;
            item.category = if c < 3 { None } else { Some((c % CATEGORIES.len() as u64) as u8) };
        }
        let currency = match mix(self.seed ^ SALT_CURRENCY, u64::from(rank)) % 100 {
            0..=84 => 0,
            85..=94 => 1,
            _ => 2,
        };
        let order = self.next_order;
        self.next_order += 1;
        let id = self.take_id();
        let valid = self.schedule(Ev {
            ts,
            id,
            kind: GenKind::Purchase,
            user,
            rfc_ts: false,
            flaw: Flaw::None,
            body: Body::Purchase { order, currency, len: len as u8, items },
        });
        // Only orders that were written validly get refunds, so every valid
        // refund names a real order of its shopper.
        if valid && self.p_refund.draw(&mut self.rng) {
            self.refund(ts, user, order, &items[..len]);
        }
    }

    fn refund(&mut self, purchase_ts: i64, user: Shopper, order: u64, items: &[Item]) {
        let delay = match self.below(100) {
            0..=44 => HOUR_MS + self.below((DAY_MS - HOUR_MS) as u64) as i64,
            45..=79 => DAY_MS + self.below(6 * DAY_MS as u64) as i64,
            _ => 7 * DAY_MS + self.below((23 * DAY_MS - 1) as u64) as i64,
        };
        let line = if self.pct(PCT_WHOLE_REFUND) {
            None
        } else {
            let it = items[self.below(items.len() as u64) as usize];
            let qty = 1 + self.below(u64::from(it.qty)) as u8;
            Some((it.product, qty))
        };
        let id = self.take_id();
        self.refunds_due.push(Reverse(DueRefund { ts: purchase_ts.saturating_add(delay), id, user, order, line }));
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Decides the event's presentation (ts format, flaw, duplicate) and puts
    /// it, and its duplicate, into the queue. Returns whether it is valid.
    fn schedule(&mut self, mut ev: Ev) -> bool {
        ev.rfc_ts = self.pct(PCT_RFC_TS);
        if self.p_invalid.draw(&mut self.rng) {
            let extra: &[Flaw] = match ev.kind {
                GenKind::View | GenKind::Click => &TOUCH_FLAWS,
                GenKind::Purchase => &PURCHASE_FLAWS,
                GenKind::Refund | GenKind::Invalid => &REFUND_FLAWS,
            };
            let i = self.below((COMMON_FLAWS.len() + extra.len()) as u64) as usize;
            ev.flaw = if i < COMMON_FLAWS.len() { COMMON_FLAWS[i] } else { extra[i - COMMON_FLAWS.len()] };
        }
        let key = ev.ts.saturating_add(self.below(self.disorder as u64 + 1) as i64);
        self.queue.push(key, ev);
        if self.p_dup.draw(&mut self.rng) {
            // Key in [key, ts + disorder]: after the original (larger
            // sequence), and no later than the original's own bound allows.
            let room = ev.ts.saturating_add(self.disorder) - key;
            let dup_key = key + self.below(room as u64 + 1) as i64;
            self.queue.push(dup_key, ev);
        }
        ev.flaw == Flaw::None
    }
}

/// Largest ring of per-millisecond buckets (a larger `disorder_ms` puts every
/// event into the heap, which is slower but has no size limit).
const MAX_RING: u64 = 1 << 16;

/// Pending events, handed out in `(key, seq)` order, `seq` being the order of
/// [`Queue::push`] calls.
///
/// Every key lies within `disorder_ms` of the clock, so events go into a ring
/// of per-millisecond FIFO buckets (O(1) per event; a binary heap was the top
/// cost of the generator). Keys beyond the ring (only when `disorder_ms` is
/// larger than [`MAX_RING`]) go into a min-heap. Both together give exactly
/// the order of one heap over all events (tested against one). Events live in one slab whose freed slots
/// are reused first, and buckets are linked lists through it, so the working
/// set stays small and cache-resident.
struct Queue {
    slab: Vec<Node>,
    free: Vec<u32>,
    /// First and last slot of bucket `key & mask` (`NIL` when empty); near
    /// keys always lie in `[cursor, cursor + head.len())`.
    head: Vec<u32>,
    tail: Vec<u32>,
    mask: u64,
    /// No near event has a key below `cursor`, and no future push will.
    cursor: i64,
    near: usize,
    /// Min-heap of (key, seq, slot) for the far events.
    far: BinaryHeap<Reverse<(i64, u64, u32)>>,
    seq: u64,
}

struct Node {
    ev: Ev,
    seq: u64,
    /// Next slot in the same bucket, or `NIL`.
    next: u32,
}

const NIL: u32 = u32::MAX;

impl Queue {
    fn new(start_ms: i64, disorder_ms: u64) -> Self {
        let len = (disorder_ms + 1).next_power_of_two();
        let len = if len <= MAX_RING { len as usize } else { 0 };
        Queue {
            slab: Vec::new(),
            free: Vec::new(),
            head: vec![NIL; len],
            tail: vec![NIL; len],
            mask: (len as u64).wrapping_sub(1),
            cursor: start_ms,
            near: 0,
            far: BinaryHeap::new(),
            seq: 0,
        }
    }

    fn bucket(&self, key: i64) -> usize {
        (key as u64 & self.mask) as usize
    }

    /// Adds an event; `key` must be at least the `now` of the last
    /// [`Queue::pop_ready`] (true as keys are >= ts >= the clock).
    fn push(&mut self, key: i64, ev: Ev) {
        let seq = self.seq;
        self.seq += 1;
        let node = Node { ev, seq, next: NIL };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = node;
                slot
            }
            None => {
                self.slab.push(node);
                // The slab holds only events in flight; 2^32 - 1 of them would
                // need hundreds of GiB, far beyond any machine we run on.
                (self.slab.len() - 1) as u32
            }
        };
        debug_assert!(key >= self.cursor);
        let offset = key.wrapping_sub(self.cursor) as u64;
        if key >= self.cursor && offset < self.head.len() as u64 {
            let b = self.bucket(key);
            match self.tail[b] {
                NIL => self.head[b] = slot,
                last => self.slab[last as usize].next = slot,
            }
            self.tail[b] = slot;
            self.near += 1;
        } else {
            self.far.push(Reverse((key, seq, slot)));
        }
    }

    /// The next event in `(key, seq)` order if its key is <= `now`. After it
    /// returns `None`, no later push may use a key below `now`.
    fn pop_ready(&mut self, now: i64) -> Option<Ev> {
        // Find the first non-empty bucket, but never move past `now`: more
        // events keyed `now` may still come.
        if self.near == 0 {
            self.cursor = self.cursor.max(now);
        } else {
            while self.cursor < now && self.head[self.bucket(self.cursor)] == NIL {
                self.cursor += 1;
            }
        }
        let b = self.bucket(self.cursor);
        let near = if self.near > 0 && self.cursor <= now && self.head[b] != NIL {
            Some((self.cursor, self.slab[self.head[b] as usize].seq))
        } else {
            None
        };
        let far = match self.far.peek() {
            Some(&Reverse((key, seq, _))) if key <= now => Some((key, seq)),
            _ => None,
        };
        let slot = match (near, far) {
            (Some(n), Some(f)) if f < n => self.pop_far(),
            (Some(_), _) => {
                let slot = self.head[b];
                self.head[b] = self.slab[slot as usize].next;
                if self.head[b] == NIL {
                    self.tail[b] = NIL;
                }
                self.near -= 1;
                slot
            }
            (None, Some(_)) => self.pop_far(),
            (None, None) => return None,
        };
        self.free.push(slot);
        Some(self.slab[slot as usize].ev)
    }

    fn pop_far(&mut self) -> u32 {
        match self.far.pop() {
            Some(Reverse((_, _, slot))) => slot,
            // Only called after a successful peek.
            None => unreachable!("pop_far on an empty heap"),
        }
    }
}

// ---------------------------------------------------------------------------
// Rendering. Hand-written so no allocation or `fmt` machinery is involved per
// line, and so the bytes depend on nothing but the event.

fn render(buf: &mut Vec<u8>, ev: &Ev) {
    buf.clear();
    if ev.flaw == Flaw::NotJson {
        render_garbage(buf, ev);
        return;
    }
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(if ev.flaw == Flaw::UnknownType { b"like" } else { ev.kind.as_str().as_bytes() });
    buf.extend_from_slice(b"\",\"event_id\":\"");
    if ev.flaw != Flaw::EmptyEventId {
        buf.extend_from_slice(ev.kind.id_prefix());
        push_u64(buf, ev.id);
    }
    buf.extend_from_slice(b"\",\"ts\":");
    match ev.flaw {
        Flaw::FloatTs => {
            push_i64(buf, ev.ts);
            buf.extend_from_slice(b".5");
        }
        Flaw::BadTsString => buf.extend_from_slice(b"\"yesterday\""),
        _ if ev.rfc_ts => {
            buf.push(b'"');
            push_rfc3339(buf, ev.ts);
            buf.push(b'"');
        }
        _ => push_i64(buf, ev.ts),
    }
    match ev.flaw {
        Flaw::MissingUser => {}
        Flaw::UserIdNumber => {
            buf.extend_from_slice(b",\"user_id\":");
            push_u64(buf, u64::from(ev.user.num));
        }
        _ => {
            buf.extend_from_slice(b",\"user_id\":\"");
            buf.extend_from_slice(if ev.user.is_creator { b"c-" } else { b"u-" });
            push_u64(buf, u64::from(ev.user.num));
            if ev.flaw == Flaw::LongId {
                // Over the 256-byte limit of SPEC §1.
                buf.push(b'-');
                buf.resize(buf.len() + 300, b'x');
            }
            buf.push(b'"');
        }
    }
    match ev.body {
        Body::Touch { creator, product, content, surface } => {
            if ev.flaw != Flaw::MissingCreator {
                buf.extend_from_slice(b",\"creator_id\":\"c-");
                push_u64(buf, u64::from(creator));
                buf.push(b'"');
            }
            if let Some(p) = product {
                buf.extend_from_slice(b",\"product_id\":\"p-");
                push_u64(buf, u64::from(p));
                buf.push(b'"');
            }
            if let Some(n) = content {
                buf.extend_from_slice(b",\"content_id\":\"ct-");
                push_u64(buf, u64::from(creator));
                buf.push(b'.');
                push_u64(buf, u64::from(n));
                buf.push(b'"');
            }
            if let Some(s) = surface {
                buf.extend_from_slice(b",\"surface\":\"");
                buf.extend_from_slice(SURFACES[usize::from(s)]);
                buf.push(b'"');
            }
        }
        Body::Purchase { order, currency, len, items } => {
            push_order(buf, ev.flaw, order);
            buf.extend_from_slice(b",\"currency\":\"");
            if ev.flaw == Flaw::BadCurrency {
                const BAD: [&[u8]; 4] = [b"usd", b"US", b"EURO", b"12X"];
                buf.extend_from_slice(BAD[(ev.id % 4) as usize]);
            } else {
                buf.extend_from_slice(CURRENCIES[usize::from(currency)]);
            }
            buf.extend_from_slice(b"\",\"items\":[");
            let len = if ev.flaw == Flaw::EmptyItems { 0 } else { len };
            for (i, it) in items[..usize::from(len)].iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                let first = i == 0;
                buf.extend_from_slice(b"{\"product_id\":\"p-");
                push_u64(buf, u64::from(it.product));
                buf.extend_from_slice(b"\",\"quantity\":");
                match ev.flaw {
                    Flaw::QtyZero if first => buf.push(b'0'),
                    Flaw::Overflow if first => buf.push(b'2'),
                    _ => push_u64(buf, u64::from(it.qty)),
                }
                buf.extend_from_slice(b",\"unit_price\":");
                match ev.flaw {
                    Flaw::NegativePrice if first => {
                        buf.push(b'-');
                        push_u64(buf, u64::from(it.price));
                    }
                    // 2 * 2^62 overflows i64.
                    Flaw::Overflow if first => push_u64(buf, 1 << 62),
                    _ => push_u64(buf, u64::from(it.price)),
                }
                if let Some(c) = it.category {
                    buf.extend_from_slice(b",\"category\":\"");
                    buf.extend_from_slice(CATEGORIES[usize::from(c)]);
                    buf.push(b'"');
                }
                buf.push(b'}');
            }
            buf.push(b']');
        }
        Body::Refund { order, line } => {
            push_order(buf, ev.flaw, order);
            if let Some((product, qty)) = line {
                buf.extend_from_slice(b",\"items\":[{\"product_id\":\"p-");
                push_u64(buf, u64::from(product));
                buf.extend_from_slice(b"\",\"quantity\":");
                push_u64(buf, u64::from(qty));
                buf.extend_from_slice(b"}]");
            }
        }
    }
    buf.push(b'}');
    if ev.flaw == Flaw::Truncated {
        // Any proper prefix of an object is invalid JSON; cut somewhere in
        // the last two thirds so the line still looks like an event.
        let len = buf.len();
        let keep = len / 3 + (ev.id % (len - len / 3 - 1) as u64) as usize;
        buf.truncate(keep);
    }
}

fn push_order(buf: &mut Vec<u8>, flaw: Flaw, order: u64) {
    if flaw != Flaw::MissingOrder {
        buf.extend_from_slice(b",\"order_id\":\"ord-");
        push_u64(buf, order);
        buf.push(b'"');
    }
}

/// Lines that are not JSON at all, each with the event number so that two
/// of them are equal only when one duplicates the other.
fn render_garbage(buf: &mut Vec<u8>, ev: &Ev) {
    match ev.id % 4 {
        0 => {
            buf.extend_from_slice(b"<html><body>502 Bad Gateway #");
            push_u64(buf, ev.id);
            buf.extend_from_slice(b"</body></html>");
        }
        1 => {
            buf.extend_from_slice(b"type=view event_id=v-");
            push_u64(buf, ev.id);
            buf.extend_from_slice(b" user_id=u-1");
        }
        2 => {
            buf.extend_from_slice(b"{\"type\":\"view\",\"event_id\":\"v-");
            push_u64(buf, ev.id);
            buf.extend_from_slice(b"\",,}");
        }
        // Not even UTF-8: readers must not assume text.
        _ => {
            buf.extend_from_slice(b"\xff\xfe{\"type\":\"view\",\"event_id\":\"v-");
            push_u64(buf, ev.id);
            buf.extend_from_slice(b"\"}");
        }
    }
}

/// "00" to "99", so integers are formatted two digits per division.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Decimal digits of `v` at the end of `tmp`; returns where they start.
fn digits(tmp: &mut [u8; 20], mut v: u64) -> usize {
    let mut i = tmp.len();
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    } else {
        i -= 1;
        tmp[i] = b'0' + v as u8;
    }
    i
}

fn push_u64(buf: &mut Vec<u8>, v: u64) {
    let mut tmp = [0u8; 20];
    let i = digits(&mut tmp, v);
    buf.extend_from_slice(&tmp[i..]);
}

fn push_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    push_u64(buf, v.unsigned_abs());
}

/// `v` with leading zeros to at least `width` (<= 20) digits.
fn push_padded(buf: &mut Vec<u8>, v: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    let i = digits(&mut tmp, v);
    buf.extend_from_slice(&tmp[i.min(tmp.len() - width)..]);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC) for `ms` since the epoch. Years outside
/// 0..=9999 are written with as many digits as needed (not RFC 3339, but they
/// only arise from absurd `start_ms`).
fn push_rfc3339(buf: &mut Vec<u8>, ms: i64) {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS) as u64;
    let (y, m, d) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        push_padded(buf, y as u64, 4);
    } else {
        push_i64(buf, y);
    }
    buf.push(b'-');
    push_padded(buf, u64::from(m), 2);
    buf.push(b'-');
    push_padded(buf, u64::from(d), 2);
    buf.push(b'T');
    push_padded(buf, rem / 3_600_000, 2);
    buf.push(b':');
    push_padded(buf, rem / 60_000 % 60, 2);
    buf.push(b':');
    push_padded(buf, rem / 1_000 % 60, 2);
    buf.push(b'.');
    push_padded(buf, rem % 1_000, 3);
    buf.push(b'Z');
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ---------------------------------------------------------------------------
// Randomness that is identical on every platform.

/// A source of uniform 64-bit words.
trait Bits {
    fn bits(&mut self) -> u64;
}

impl Bits for ChaCha8Rng {
    fn bits(&mut self) -> u64 {
        self.next_u64()
    }
}

/// SplitMix64, for cheap streams derived from a hash (creator catalogues).
struct SplitMix(u64);

impl Bits for SplitMix {
    fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0, 0)
    }
}

/// SplitMix64's finaliser over `a ^ golden * b`: a stable hash for
/// per-entity attributes (price, category, catalogue, ...).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in `0..n` (`n >= 1`), unbiased (Lemire's multiply-and-reject).
fn below<R: Bits>(rng: &mut R, n: u64) -> u64 {
    debug_assert!(n > 0);
    let mut m = u128::from(rng.bits()) * u128::from(n);
    if (m as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (m as u64) < threshold {
            m = u128::from(rng.bits()) * u128::from(n);
        }
    }
    (m >> 64) as u64
}

/// Uniform in `[0, 1)` with 53 random bits; exact, so platform-independent.
fn unit<R: Bits>(rng: &mut R) -> f64 {
    (rng.bits() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A probability as an integer threshold on a 64-bit draw.
#[derive(Clone, Copy, Debug)]
struct Prob {
    threshold: u64,
    always: bool,
}

impl Prob {
    fn new(p: f64) -> Self {
        Prob {
            // `as` saturates; p * 2^64 is an exact scaling.
            threshold: (p * 18_446_744_073_709_551_616.0) as u64,
            always: p >= 1.0,
        }
    }

    /// Always consumes one draw, so the stream does not depend on `p`'s value
    /// beyond the outcome.
    fn draw<R: Bits>(&self, rng: &mut R) -> bool {
        let x = rng.bits();
        self.always || x < self.threshold
    }
}

/// `ln(x)` for finite `x > 0` (normal), using only basic IEEE arithmetic so
/// the result is bit-identical everywhere (unlike libm's `ln`). Error ~1e-16.
fn det_ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln(m) = 2 atanh(z), |z| <= 0.172, so 11 odd terms reach ~1e-19.
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let mut sum = 0.0;
    for k in (0..11).rev() {
        sum = sum * z2 + 1.0 / f64::from(2 * k + 1);
    }
    2.0 * z * sum + e as f64 * std::f64::consts::LN_2
}

/// `exp(x)`, bit-identical everywhere like [`det_ln`]; 0 below -700, +inf
/// above 700 (we never get near either).
fn det_exp(x: f64) -> f64 {
    if x < -700.0 {
        return 0.0;
    }
    if x > 700.0 {
        return f64::INFINITY;
    }
    let n = (x * std::f64::consts::LOG2_E).round();
    let r = x - n * std::f64::consts::LN_2;
    // Horner form of the Taylor series; |r| <= 0.35 so 16 terms reach ~1e-22.
    let mut p = 1.0;
    for k in (1..=16).rev() {
        p = 1.0 + r * p / f64::from(k);
    }
    f64::from_bits(((n as i64 + 1023) as u64) << 52) * p
}

fn det_pow(x: f64, y: f64) -> f64 {
    det_exp(y * det_ln(x))
}

/// Ranks covered by the alias table; the rest (if any) by rejection-inversion.
const ZIPF_HEAD: u64 = 1 << 16;

/// Zipf over ranks `1..=n` with P(k) proportional to k^-s (s > 1), sampled
/// from an alias table for the first [`ZIPF_HEAD`] ranks (one draw, no float
/// math per sample) and by rejection-inversion (Hörmann & Derflinger 1996)
/// beyond, so memory stays fixed for any `n`. Not `rand_distr::Zipf`: its
/// `powf` and `ln` are the platform C library's or the `libm` crate's,
/// depending on which features of `num-traits` the build unifies, and those
/// differ in the last bit, which can flip a rejection. Every float operation
/// here is exactly specified by IEEE 754.
struct Zipf {
    n: u64,
    head: u64,
    /// Acceptance threshold (of 2^32) and alias of each head slot.
    thr: Vec<u32>,
    alias: Vec<u32>,
    /// Probability of the tail (0 when `n <= head`).
    tail: Prob,
    s: f64,
    /// H-integral bounds of the tail's rejection-inversion.
    tail_lo: f64,
    tail_hi: f64,
}

impl Zipf {
    fn new(n: u64, s: f64) -> Self {
        debug_assert!(n >= 1 && s > 1.0);
        let head = n.min(ZIPF_HEAD);
        let weights: Vec<f64> = (1..=head).map(|k| det_pow(k as f64, -s)).collect();
        let head_mass: f64 = weights.iter().sum();
        // Vose's alias method on weights scaled to mean 1.
        let scale = head as f64 / head_mass;
        let mut p: Vec<f64> = weights.iter().map(|w| w * scale).collect();
        let mut thr = vec![u32::MAX; head as usize];
        let mut alias: Vec<u32> = (0..head as u32).collect();
        let (mut small, mut large): (Vec<u32>, Vec<u32>) = (0..head as u32).partition(|&i| p[i as usize] < 1.0);
        while let (Some(&l), Some(&g)) = (small.last(), large.last()) {
            small.pop();
            thr[l as usize] = (p[l as usize] * 4_294_967_296.0) as u32;
            alias[l as usize] = g;
            p[g as usize] = (p[g as usize] + p[l as usize]) - 1.0;
            if p[g as usize] < 1.0 {
                large.pop();
                small.push(g);
            }
        }
        // Leftovers are 1 up to rounding: they keep their own rank
        // (thr = MAX with alias = self never picks another rank).
        let mut z = Zipf { n, head, thr, alias, tail: Prob::new(0.0), s, tail_lo: 0.0, tail_hi: 0.0 };
        if n > head {
            let m = (head + 1) as f64;
            z.tail_lo = z.h_integral(m + 0.5) - det_pow(m, -s);
            z.tail_hi = z.h_integral(n as f64 + 0.5);
            // The midpoint rule sum_{k=m}^{n} k^-s ~ H(n+.5) - H(m-.5).
            let tail_mass = z.tail_hi - z.h_integral(m - 0.5);
            z.tail = Prob::new(tail_mass / (head_mass + tail_mass));
        }
        z
    }

    /// H(x) = integral of t^-s from 1 to x = (x^(1-s) - 1) / (1 - s).
    fn h_integral(&self, x: f64) -> f64 {
        let q = 1.0 - self.s;
        (det_pow(x, q) - 1.0) / q
    }

    fn h_integral_inv(&self, u: f64) -> f64 {
        let q = 1.0 - self.s;
        // For s > 1, u < 1/(s-1) on the whole support, so the base is > 0.
        det_exp(det_ln(1.0 + u * q) / q)
    }

    fn sample<R: Bits>(&self, rng: &mut R) -> u32 {
        if self.n > self.head && self.tail.draw(rng) {
            return self.sample_tail(rng);
        }
        let r = rng.bits();
        let i = (((r >> 32) * self.head) >> 32) as usize;
        let k = if (r as u32) < self.thr[i] { i as u32 } else { self.alias[i] };
        k + 1
    }

    fn sample_tail<R: Bits>(&self, rng: &mut R) -> u32 {
        let (m, n) = ((self.head + 1) as f64, self.n as f64);
        loop {
            let u = self.tail_hi + unit(rng) * (self.tail_lo - self.tail_hi);
            let x = self.h_integral_inv(u);
            let k = (x + 0.5).floor().clamp(m, n);
            // Accept the top k^-s of k's H-interval (which is at least that
            // wide because t^-s is convex): P(k) proportional to k^-s.
            if u >= self.h_integral(k + 0.5) - det_pow(k, -self.s) {
                // k <= n <= u32::MAX, as n comes from a u32 option.
                return k as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::{HashMap, HashSet};

    fn run(opts: &GenOptions) -> Vec<(GenKind, Vec<u8>)> {
        let mut out = Vec::new();
        let stats = generate(opts, |k, line| {
            out.push((k, line.to_vec()));
            Ok(())
        })
        .expect("generate");
        assert_eq!(stats.total, out.len() as u64);
        for k in GenKind::ALL {
            let n = out.iter().filter(|(kk, _)| *kk == k).count() as u64;
            assert_eq!(stats.by_kind[k.index()], n, "{k:?}");
        }
        out
    }

    fn opts(events: u64) -> GenOptions {
        GenOptions { events, ..GenOptions::default() }
    }

    fn all_bytes(out: &[(GenKind, Vec<u8>)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (_, l) in out {
            v.extend_from_slice(l);
            v.push(b'\n');
        }
        v
    }

    /// Days since the epoch of a civil date (Hinnant's `days_from_civil`),
    /// the inverse of the formatter's `civil_from_days`.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Strict parser for exactly the format the generator writes.
    fn parse_rfc3339(s: &str) -> Option<i64> {
        let b = s.as_bytes();
        if b.len() != 24 || &s[4..5] != "-" || &s[7..8] != "-" || &s[10..11] != "T" {
            return None;
        }
        if &s[13..14] != ":" || &s[16..17] != ":" || &s[19..20] != "." || &s[23..] != "Z" {
            return None;
        }
        let num = |r: std::ops::Range<usize>| s[r].parse::<i64>().ok();
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
            return None;
        }
        Some(days_from_civil(y, mo, d) * DAY_MS + ((h * 60 + mi) * 60 + se) * 1000 + ms)
    }

    /// A valid event per SPEC §1, reduced to what the tests look at.
    #[derive(Debug)]
    struct Parsed {
        kind: String,
        event_id: String,
        ts: i64,
        rfc: bool,
        user: String,
        creator: Option<String>,
        product: Option<String>,
        surface: Option<String>,
        order: Option<String>,
        currency: Option<String>,
        items: Items,
    }

    fn id_field(v: &Value, k: &str) -> Result<String, String> {
        match v.get(k) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(s.clone()),
            Some(_) => Err(format!("bad {k}")),
            None => Err(format!("missing {k}")),
        }
    }

    fn opt_str(v: &Value, k: &str) -> Result<Option<String>, String> {
        match v.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("bad {k}")),
        }
    }

    fn positive_int(v: &Value, k: &str) -> Result<i64, String> {
        match v.get(k).and_then(Value::as_i64) {
            Some(q) if q >= 1 => Ok(q),
            _ => Err(format!("bad {k}")),
        }
    }

    /// Validates a line against SPEC §1; the error names the broken rule.
    fn check(line: &[u8]) -> Result<Parsed, String> {
        let v: Value = serde_json::from_slice(line).map_err(|_| "invalid_json".to_string())?;
        let kind = match v.get("type") {
            Some(Value::String(t)) if ["view", "click", "purchase", "refund"].contains(&&**t) => t.clone(),
            _ => return Err("bad type".into()),
        };
        let event_id = id_field(&v, "event_id")?;
        let (ts, rfc) = match v.get("ts") {
            Some(Value::Number(n)) => (n.as_i64().ok_or("float ts")?, false),
            Some(Value::String(s)) => (parse_rfc3339(s).ok_or("bad ts string")?, true),
            _ => return Err("missing ts".into()),
        };
        let user = id_field(&v, "user_id")?;
        let mut p = Parsed {
            kind: kind.clone(),
            event_id,
            ts,
            rfc,
            user,
            creator: None,
            product: None,
            surface: None,
            order: None,
            currency: None,
            items: Vec::new(),
        };
        match &*kind {
            "view" | "click" => {
                p.creator = Some(id_field(&v, "creator_id")?);
                p.product = opt_str(&v, "product_id")?;
                opt_str(&v, "content_id")?;
                p.surface = opt_str(&v, "surface")?;
            }
            "purchase" => {
                p.order = Some(id_field(&v, "order_id")?);
                match v.get("currency") {
                    Some(Value::String(c)) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => {
                        p.currency = Some(c.clone())
                    }
                    _ => return Err("bad currency".into()),
                }
                let items = match v.get("items") {
                    Some(Value::Array(a)) if !a.is_empty() => a,
                    _ => return Err("bad items".into()),
                };
                for it in items {
                    let prod = id_field(it, "product_id")?;
                    let q = positive_int(it, "quantity")?;
                    let price = match it.get("unit_price").and_then(Value::as_i64) {
                        Some(x) if x >= 0 => x,
                        _ => return Err("bad unit_price".into()),
                    };
                    q.checked_mul(price).ok_or("overflow")?;
                    if !(99..=19_999).contains(&price) || q > 3 {
                        return Err(format!("generator range broken: {q} x {price}"));
                    }
                    opt_str(it, "category")?;
                    p.items.push((prod, q));
                }
            }
            _ => {
                p.order = Some(id_field(&v, "order_id")?);
                if let Some(items) = v.get("items") {
                    let items = items.as_array().ok_or("bad items")?;
                    for it in items {
                        p.items.push((id_field(it, "product_id")?, positive_int(it, "quantity")?));
                    }
                }
            }
        }
        Ok(p)
    }

    #[test]
    fn same_seed_same_bytes() {
        let o = GenOptions { events: 20_000, duplicates: 0.05, invalid: 0.05, refunds: 0.5, ..GenOptions::default() };
        let a = all_bytes(&run(&o));
        let b = all_bytes(&run(&o));
        assert_eq!(a, b);
    }

    #[test]
    fn different_seed_different_bytes() {
        let a = all_bytes(&run(&opts(5_000)));
        let b = all_bytes(&run(&GenOptions { seed: 43, ..opts(5_000) }));
        assert_ne!(a, b);
    }

    /// Pins the exact bytes for the default options, so any change to the
    /// stream is noticed. Runs everywhere, so it also checks the
    /// "same bytes on every machine" promise across CI platforms.
    #[test]
    fn output_is_pinned() {
        let out = run(&opts(2_000));
        let bytes = all_bytes(&out);
        // FNV-1a: a tiny, fixed hash.
        let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        assert_eq!(
            std::str::from_utf8(&out[0].1).unwrap(),
            r#"{"type":"view","event_id":"v-34","ts":"2026-11-01T00:00:00.032Z","user_id":"u-2","creator_id":"c-40","product_id":"p-1","content_id":"ct-40.11","surface":"showcase"}"#
        );
        // Changing this breaks reproducibility of published workloads: do it
        // only on purpose, and say so in the changelog.
        assert_eq!(h, 0xd4ed_967b_7931_8ab0, "hash of the first 2000 lines");
    }

    #[test]
    fn exact_line_count() {
        for (n, dup, inv) in [(0, 0.0, 0.0), (1, 0.0, 0.0), (7, 1.0, 1.0), (1_000, 0.5, 0.5), (3_333, 0.0, 0.0)] {
            let o = GenOptions { events: n, duplicates: dup, invalid: inv, ..GenOptions::default() };
            let out = run(&o);
            assert_eq!(out.len() as u64, n);
            assert!(out.iter().all(|(_, l)| !l.is_empty() && !l.contains(&b'\n')));
        }
    }

    #[test]
    fn valid_lines_follow_spec_and_invalid_lines_break_it() {
        let o = GenOptions {
            events: 20_000,
            invalid: 0.1,
            refunds: 1.0,
            // Refunds come 1 h to 30 d later: compress time so they show up.
            events_per_sec: 0.5,
            ..GenOptions::default()
        };
        let mut reasons = HashSet::new();
        let mut kinds = HashMap::new();
        for (k, line) in run(&o) {
            match (k, check(&line)) {
                (GenKind::Invalid, Ok(p)) => panic!("invalid line passed: {p:?}"),
                (GenKind::Invalid, Err(e)) => {
                    reasons.insert(e);
                }
                (_, Err(e)) => panic!("{e}: {}", String::from_utf8_lossy(&line)),
                (k, Ok(p)) => {
                    assert_eq!(p.kind, k.as_str());
                    let prefix = &p.event_id[..2];
                    assert_eq!(prefix, std::str::from_utf8(k.id_prefix()).unwrap());
                    *kinds.entry(k.as_str()).or_insert(0) += 1;
                }
            }
        }
        assert!(reasons.len() >= 12, "too few kinds of invalid: {reasons:?}");
        assert_eq!(kinds.len(), 4, "{kinds:?}");
    }

    fn max_lag(out: &[(GenKind, Vec<u8>)]) -> i64 {
        let mut max_ts = i64::MIN;
        let mut lag = 0;
        for (_, line) in out {
            // Invalid lines may have no usable ts; every valid one does.
            if let Ok(p) = check(line) {
                if max_ts != i64::MIN {
                    lag = lag.max(max_ts - p.ts);
                }
                max_ts = max_ts.max(p.ts);
            }
        }
        lag
    }

    #[test]
    fn disorder_bound_holds() {
        for disorder in [0, 50, 2_000] {
            // Dense event time, where the disorder is really used ...
            let dense =
                run(&GenOptions { events: 30_000, disorder_ms: disorder, duplicates: 0.2, ..GenOptions::default() });
            let lag = max_lag(&dense);
            assert!(lag <= disorder as i64, "lag {lag} > {disorder}");
            if disorder > 0 {
                assert!(lag > disorder as i64 / 2, "lag {lag} for {disorder}");
            }
            // ... and sparse event time, where refunds (1 h to 30 d after their
            // purchase) come into the output.
            let sparse = run(&GenOptions {
                events: 30_000,
                disorder_ms: disorder,
                duplicates: 0.2,
                refunds: 1.0,
                events_per_sec: 0.2,
                ..GenOptions::default()
            });
            let refunds = sparse.iter().filter(|(k, _)| *k == GenKind::Refund).count();
            assert!(refunds > 500, "refunds must take part: {refunds}");
            let lag = max_lag(&sparse);
            assert!(lag <= disorder as i64, "lag {lag} > {disorder}");
        }
    }

    #[test]
    fn duplicate_rate_as_asked() {
        let o = GenOptions { events: 20_000, duplicates: 0.1, ..GenOptions::default() };
        let out = run(&o);
        let mut seen = HashMap::new();
        let mut dups = 0;
        for (i, (_, line)) in out.iter().enumerate() {
            if let Some(first) = seen.insert(line.clone(), i) {
                dups += 1;
                // Later, and close: within what the disorder allows.
                let (a, b) = (check(&out[first].1).unwrap(), check(line).unwrap());
                assert_eq!(a.event_id, b.event_id);
            }
        }
        // `duplicates` is per event: dups / originals ~ 0.1.
        let rate = dups as f64 / (out.len() - dups) as f64;
        assert!((0.085..0.115).contains(&rate), "duplicate rate {rate}");
        // And nothing else repeats: event ids of distinct lines are unique.
        let ids: HashSet<_> = seen.keys().map(|l| check(l).unwrap().event_id).collect();
        assert_eq!(ids.len(), seen.len());
    }

    #[test]
    fn invalid_rate_as_asked() {
        let o = GenOptions { events: 20_000, invalid: 0.05, ..GenOptions::default() };
        let out = run(&o);
        let bad = out.iter().filter(|(k, _)| *k == GenKind::Invalid).count();
        let rate = bad as f64 / out.len() as f64;
        assert!((0.04..0.06).contains(&rate), "invalid rate {rate}");
    }

    type Items = Vec<(String, i64)>;

    #[test]
    fn refunds_refer_to_earlier_orders_of_the_same_user() {
        let o = GenOptions {
            events: 20_000,
            refunds: 1.0,
            invalid: 0.05,
            duplicates: 0.05,
            events_per_sec: 0.1,
            ..GenOptions::default()
        };
        // order_id -> (user_id, ts, items).
        let mut orders: HashMap<String, (String, i64, Items)> = HashMap::new();
        let (mut refunds, mut partial) = (0, 0);
        for (k, line) in run(&o) {
            let Ok(p) = check(&line) else { continue };
            let order = p.order.clone().unwrap_or_default();
            match k {
                GenKind::Purchase => {
                    let prev = orders.insert(order, (p.user, p.ts, p.items.clone()));
                    // Only a byte-identical duplicate may repeat an order.
                    if let Some(prev) = prev {
                        assert_eq!(prev.1, p.ts);
                    }
                }
                GenKind::Refund => {
                    refunds += 1;
                    let (user, ts, items) =
                        orders.get(&order).unwrap_or_else(|| panic!("refund of unseen order {order}"));
                    assert_eq!(user, &p.user);
                    let delay = p.ts - ts;
                    assert!((HOUR_MS..30 * DAY_MS).contains(&delay), "delay {delay}");
                    for (prod, q) in &p.items {
                        partial += 1;
                        let bought: i64 = items.iter().filter(|(ip, _)| ip == prod).map(|l| l.1).sum();
                        assert!((1..=bought).contains(q), "{q} of {bought}");
                    }
                }
                _ => {}
            }
        }
        assert!(refunds > 500 && partial > 200, "{refunds} refunds, {partial} partial");
    }

    #[test]
    fn most_purchases_follow_a_touch_of_their_shopper() {
        let out = run(&opts(20_000));
        // (user, product) -> touch times.
        let mut touches: HashMap<(String, String), Vec<i64>> = HashMap::new();
        let mut purchases = Vec::new();
        for (_, line) in &out {
            let p = check(line).unwrap();
            match &*p.kind {
                "view" | "click" => {
                    if let Some(prod) = &p.product {
                        touches.entry((p.user.clone(), prod.clone())).or_default().push(p.ts);
                    }
                }
                "purchase" => purchases.push(p),
                _ => {}
            }
        }
        let attributable = purchases
            .iter()
            .filter(|p| {
                p.items.iter().any(|(prod, _)| {
                    touches
                        .get(&(p.user.clone(), prod.clone()))
                        .is_some_and(|ts| ts.iter().any(|&t| t <= p.ts && p.ts - t <= 7 * DAY_MS))
                })
            })
            .count();
        let share = attributable as f64 / purchases.len() as f64;
        assert!(share > 0.75, "only {share} of purchases attributable");
        assert!(share < 0.99, "no unattributable purchases at all: {share}");
    }

    #[test]
    fn mix_and_shape_are_realistic() {
        let o = GenOptions { events: 50_000, ..GenOptions::default() };
        let out = run(&o);
        let n = out.len() as f64;
        let share = |k: GenKind| out.iter().filter(|(kk, _)| *kk == k).count() as f64 / n;
        assert!((0.62..0.74).contains(&share(GenKind::View)));
        assert!((0.19..0.26).contains(&share(GenKind::Click)));
        assert!((0.065..0.095).contains(&share(GenKind::Purchase)));
        let parsed: Vec<Parsed> = out.iter().map(|(_, l)| check(l).unwrap()).collect();
        let touches: Vec<&Parsed> = parsed.iter().filter(|p| p.creator.is_some()).collect();
        let storefront = touches.iter().filter(|p| p.product.is_none()).count() as f64;
        assert!((0.1..0.2).contains(&(storefront / touches.len() as f64)));
        let own = touches.iter().filter(|p| p.creator.as_ref() == Some(&p.user)).count();
        assert!(own > 0, "no self-attribution case");
        let surfaces: HashSet<_> = touches.iter().filter_map(|p| p.surface.clone()).collect();
        assert_eq!(surfaces.len(), 4);
        let currencies: HashSet<_> = parsed.iter().filter_map(|p| p.currency.clone()).collect();
        assert_eq!(currencies.len(), 3);
        let rfc = parsed.iter().filter(|p| p.rfc).count() as f64 / n;
        assert!((0.01..0.03).contains(&rfc), "rfc ts share {rfc}");
        // Skew: the hottest shopper has far more events than the median one.
        let mut per_user: HashMap<&str, u32> = HashMap::new();
        for p in &parsed {
            *per_user.entry(&p.user).or_default() += 1;
        }
        let mut counts: Vec<u32> = per_user.values().copied().collect();
        counts.sort_unstable();
        assert!(counts[counts.len() - 1] > 100 * counts[counts.len() / 2]);
        // Event time advances at events_per_sec on average.
        let (lo, hi) = (parsed[0].ts, parsed.iter().map(|p| p.ts).max().unwrap());
        let secs = (hi - lo) as f64 / 1000.0;
        assert!((n / secs - 1_000.0).abs() < 50.0, "rate {}", n / secs);
    }

    fn dummy_ev(id: u64) -> Ev {
        Ev {
            ts: 0,
            id,
            kind: GenKind::View,
            user: Shopper { num: 1, is_creator: false },
            rfc_ts: false,
            flaw: Flaw::None,
            body: Body::Touch { creator: 1, product: None, content: None, surface: None },
        }
    }

    /// The ring-and-heap queue hands events out exactly as one min-heap over
    /// (key, push order) would, whatever the ring size and clock jumps.
    #[test]
    fn queue_matches_a_plain_heap() {
        for disorder in [0u64, 1, 7, 2_000, MAX_RING * 2] {
            let mut q = Queue::new(1_000, disorder);
            let mut reference = BinaryHeap::new();
            let mut src = SplitMix(disorder);
            let (mut got, mut want) = (Vec::new(), Vec::new());
            let mut now = 1_000i64;
            for id in 0..30_000u64 {
                now += match below(&mut src, 100) {
                    0 => below(&mut src, 3 * disorder + 10) as i64,
                    _ => below(&mut src, 3) as i64,
                };
                let key = if below(&mut src, 50) == 0 {
                    now + disorder as i64 + 1 + below(&mut src, 100_000) as i64
                } else {
                    now + below(&mut src, disorder + 1) as i64
                };
                q.push(key, dummy_ev(id));
                reference.push(Reverse((key, id)));
                while let Some(ev) = q.pop_ready(now) {
                    got.push(ev.id);
                }
                while let Some(&Reverse((key, id))) = reference.peek() {
                    if key > now {
                        break;
                    }
                    reference.pop();
                    want.push(id);
                }
                assert_eq!(got.len(), want.len(), "disorder {disorder}, push {id}");
            }
            assert_eq!(got, want, "disorder {disorder}");
            assert!(got.len() > 25_000);
        }
    }

    #[test]
    fn rfc3339_formatting() {
        let fmt = |ms: i64| {
            let mut b = Vec::new();
            push_rfc3339(&mut b, ms);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(fmt(DEFAULT_START_MS), "2026-11-01T00:00:00.000Z");
        assert_eq!(fmt(DEFAULT_START_MS + 1_234), "2026-11-01T00:00:01.234Z");
        assert_eq!(fmt(1_764_400_000_000), "2025-11-29T07:06:40.000Z");
        assert_eq!(fmt(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt(-1), "1969-12-31T23:59:59.999Z");
        let mut src = SplitMix(7);
        for _ in 0..20_000 {
            // Years 1900 to ~2100.
            let ms = below(&mut src, 6_311_390_400_000) as i64 - 2_208_988_800_000;
            assert_eq!(parse_rfc3339(&fmt(ms)), Some(ms), "{}", fmt(ms));
        }
    }

    #[test]
    fn det_math_matches_std() {
        let mut src = SplitMix(1);
        for _ in 0..10_000 {
            let x = unit(&mut src) * 1e7 + 1e-3;
            assert!((det_ln(x) - x.ln()).abs() <= 1e-14 * x.ln().abs().max(1.0));
            let y = unit(&mut src) * 80.0 - 40.0;
            assert!((det_exp(y) / y.exp() - 1.0).abs() < 1e-14, "{y}");
        }
    }

    #[test]
    fn zipf_is_skewed_and_covers_the_tail() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let z = Zipf::new(10_000, ZIPF_EXPONENT);
        let mut hist = vec![0u32; 10_001];
        for _ in 0..200_000 {
            hist[z.sample(&mut rng) as usize] += 1;
        }
        // P(1) / P(2) = 2^1.1 ~ 2.14; H(10000, 1.1) ~ 6.5, so P(1) ~ 0.15.
        let r = f64::from(hist[1]) / f64::from(hist[2]);
        assert!((1.95..2.35).contains(&r), "ratio {r}");
        assert!((0.13..0.17).contains(&(f64::from(hist[1]) / 200_000.0)));
        assert_eq!(hist[0], 0);

        // Beyond the alias table: rejection-inversion over the tail.
        let n = 4_000_000u64;
        let z = Zipf::new(n, ZIPF_EXPONENT);
        let (mut tail, mut top, mut total) = (0u32, 0u32, 0u32);
        for _ in 0..200_000 {
            let k = u64::from(z.sample(&mut rng));
            assert!((1..=n).contains(&k));
            tail += u32::from(k > ZIPF_HEAD);
            top += u32::from(k > n / 2);
            total += 1;
        }
        // sum_{k>2^16} k^-1.1 / sum_k k^-1.1 ~ (3.30 - 2.19) / (10.58 - 2.19) ~ 0.13
        let share = f64::from(tail) / f64::from(total);
        assert!((0.11..0.15).contains(&share), "tail share {share}");
        assert!(top > 0, "the far tail is reachable");
    }

    #[test]
    fn bad_options_are_rejected() {
        for o in [
            GenOptions { users: 0, ..opts(1) },
            GenOptions { duplicates: 1.5, ..opts(1) },
            GenOptions { invalid: f64::NAN, ..opts(1) },
            GenOptions { events_per_sec: 0.0, ..opts(1) },
            GenOptions { events_per_sec: 1e6, disorder_ms: 1 << 40, ..opts(1) },
        ] {
            let err = generate(&o, |_, _| Ok(())).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    /// The memory estimates in the docs assume these sizes.
    #[test]
    fn in_flight_records_are_small() {
        assert!(std::mem::size_of::<Node>() <= 112, "{}", std::mem::size_of::<Node>());
        assert!(std::mem::size_of::<DueRefund>() <= 48, "{}", std::mem::size_of::<DueRefund>());
    }

    #[test]
    fn sink_errors_stop_generation() {
        let mut calls = 0;
        let err = generate(&opts(1_000), |_, _| {
            calls += 1;
            if calls == 10 {
                Err(io::Error::other("disk full"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(calls, 10);
    }
}
