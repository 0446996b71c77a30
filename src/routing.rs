//! How Kafka producers spread keys over partitions, so the worker can check that every
//! event sits on the partition its `user_id` maps to (SPEC 8.6), and tests and
//! `attrib produce` can lay topics out the same way.

/// How the inputs were partitioned (`kafka.partitioner`), to check that every event sits
/// on the partition its `user_id` maps to (SPEC 8.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partitioner {
    /// The Java client's default (and librdkafka's `murmur2_random`):
    /// `(murmur2(key) & 0x7fffffff) % partitions`.
    Murmur2,
    /// librdkafka's default `consistent_random`: CRC32 of the key, modulo the count.
    Crc32,
}

impl Partitioner {
    /// Parses `kafka.partitioner`.
    pub fn parse(name: &str) -> Option<Partitioner> {
        match name {
            "murmur2_random" | "murmur2" => Some(Partitioner::Murmur2),
            "consistent_random" | "consistent" => Some(Partitioner::Crc32),
            _ => None,
        }
    }

    /// The partition `key` maps to among `partitions`.
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        let h = match self {
            Partitioner::Murmur2 => murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff,
            Partitioner::Crc32 => crc32fast::hash(key),
        };
        (h % n) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's own test vectors (clients UtilsTest.testMurmur2), as signed Java ints.
        for (key, java) in [
            (&b"21"[..], -973932308i32),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ] {
            assert_eq!(murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32, java, "{key:?}");
        }
        // toPositive(h) % n
        let p = Partitioner::Murmur2.partition(b"21", 4);
        assert_eq!(p, ((-973932308i32 & 0x7fff_ffff) % 4));
    }
}
