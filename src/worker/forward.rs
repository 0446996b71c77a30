//! What the re-key stage ([`super::repartition`]) writes on the internal topic besides
//! the payload, and how the joining stage reads it back (SPEC 8.6).
//!
//! Every message on `<group_id>-repartition` carries one header:
//!
//! - `attrib-src` on a forwarded event: `<source>\n<topic>\n<partition>\n<offset>`, where
//!   it was read. `source` is the index of that input partition among all of them (input
//!   topics in `kafka.input_topics` order, partitions in order): the joiner keeps one
//!   watermark input per source partition. Dead letters name the original position.
//! - `attrib-mark` on a watermark marker (empty payload):
//!   `<source>\n<max_ts or ->\n<0|1 idle>`: the largest event time the stage has read from
//!   that source partition so far, and whether it is idle. The stage writes markers to
//!   every internal partition after the events they cover, from the same producer, so a
//!   joiner that reads a marker has read every event of that source that went to its
//!   partition before it.
//!
//! Pure: no Kafka here, so the codec is tested beside the code and the restore replays
//! the same decisions as the live path.

use crate::model::Millis;

/// Header of a forwarded event.
pub const SOURCE_HEADER: &str = "attrib-src";
/// Header of a watermark marker.
pub const MARK_HEADER: &str = "attrib-mark";

/// What a message on the internal topic is, read from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// An input message, read at `topic[partition]@offset` (source partition `source`).
    Event { source: u32, topic: String, partition: i32, offset: i64 },
    /// Watermark progress of source partition `source`.
    Mark { source: u32, max_ts: Option<Millis>, idle: bool },
}

impl Forwarded {
    /// The header (name, value) that carries it.
    pub fn header(&self) -> (&'static str, String) {
        match self {
            Forwarded::Event { source, topic, partition, offset } => {
                (SOURCE_HEADER, format!("{source}\n{topic}\n{partition}\n{offset}"))
            }
            Forwarded::Mark { source, max_ts, idle } => {
                let ts = max_ts.map_or_else(|| "-".to_string(), |t| t.to_string());
                (MARK_HEADER, format!("{source}\n{ts}\n{}", u8::from(*idle)))
            }
        }
    }

    /// Reads one header; `None` when it is not ours or is malformed.
    pub fn parse(name: &str, value: &[u8]) -> Option<Forwarded> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split('\n');
        let source: u32 = parts.next()?.parse().ok()?;
        let out = match name {
            SOURCE_HEADER => Forwarded::Event {
                source,
                topic: parts.next()?.to_string(),
                partition: parts.next()?.parse().ok()?,
                offset: parts.next()?.parse().ok()?,
            },
            MARK_HEADER => Forwarded::Mark {
                source,
                max_ts: match parts.next()? {
                    "-" => None,
                    t => Some(t.parse().ok()?),
                },
                idle: match parts.next()? {
                    "0" => false,
                    "1" => true,
                    _ => return None,
                },
            },
            _ => return None,
        };
        parts.next().is_none().then_some(out)
    }

    /// The first of `headers` (name, value) that is ours.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Option<Forwarded> {
        headers.into_iter().find_map(|(name, value)| Forwarded::parse(name, value?))
    }
}

/// The source partitions of `topics` (name, partition count), in order: source `i` is
/// partition `i - offset` of the topic whose range holds `i`.
pub fn sources(topics: &[(String, i32)]) -> Vec<(String, i32)> {
    topics.iter().flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for f in [
            Forwarded::Event { source: 7, topic: "purchases".into(), partition: 2, offset: 12345 },
            Forwarded::Mark { source: 0, max_ts: Some(1_764_400_000_000), idle: false },
            Forwarded::Mark { source: 12, max_ts: None, idle: true },
            Forwarded::Mark { source: 3, max_ts: Some(-5), idle: true },
        ] {
            let (name, value) = f.header();
            assert_eq!(Forwarded::parse(name, value.as_bytes()), Some(f.clone()), "{value:?}");
        }
    }

    #[test]
    fn malformed_headers_are_not_ours() {
        for (name, value) in [
            (SOURCE_HEADER, &b"x\nclicks\n0\n1"[..]),
            (SOURCE_HEADER, b"1\nclicks\n0"),
            (SOURCE_HEADER, b"1\nclicks\n0\n1\nextra"),
            (MARK_HEADER, b"1\n-\n2"),
            (MARK_HEADER, b"1\nsoon\n0"),
            (MARK_HEADER, b"\xff"),
            ("other", b"1\n-\n0"),
        ] {
            assert_eq!(Forwarded::parse(name, value), None, "{name} {value:?}");
        }
        let h = [("trace", Some(&b"abc"[..])), (MARK_HEADER, None), (MARK_HEADER, Some(&b"4\n10\n1"[..]))];
        assert_eq!(Forwarded::from_headers(h), Some(Forwarded::Mark { source: 4, max_ts: Some(10), idle: true }));
    }

    #[test]
    fn sources_list_every_partition_of_every_topic_in_order() {
        let s = sources(&[("clicks".into(), 2), ("purchases".into(), 3)]);
        assert_eq!(s[0], ("clicks".to_string(), 0));
        assert_eq!(s[2], ("purchases".to_string(), 0));
        assert_eq!(s.len(), 5);
    }
}
