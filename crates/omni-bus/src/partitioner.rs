//! The partitioning contract: which partition a key belongs on.
//!
//! Every omnirouter record is keyed by tenant, and a tenant's state lives on one partition
//! number of every co-partitioned topic. Kafka clients disagree on where a key goes by default
//! (librdkafka: CRC32, `consistent_random`; the Java client and kafkajs: murmur2), so the
//! contract names one: **murmur2, as Apache Kafka's Java client computes it**
//! (`toPositive(murmur2(key)) % partitions`). omnirouter's producers are configured with
//! librdkafka's `murmur2_random`, which is that function for keyed records; the router checks
//! every record it reads against [`partition_for`] and forwards one that landed elsewhere.

/// Apache Kafka's `Utils.murmur2` (seed `0x9747b28c`), bit for bit, as a signed Java `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    // Java computes `seed ^ length` on ints: the length's low 32 bits.
    #[allow(clippy::cast_possible_truncation)]
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// The partition of `key` among `partitions` (at least 1) under the contract: the Java
/// client's default partitioner for keyed records.
pub fn partition_for(key: &[u8], partitions: usize) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    let n = i32::try_from(partitions.max(1)).unwrap_or(i32::MAX);
    positive % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_values_kafkas_own_tests_pin() {
        // Apache Kafka's UtilsTest.testMurmur2: the Java implementation's results.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for n in 1..20 {
            for key in ["demo", "t1", "t2", "tenant-with-a-long-name", ""] {
                let p = partition_for(key.as_bytes(), n);
                assert!((0..i32::try_from(n).unwrap()).contains(&p));
                assert_eq!(p, partition_for(key.as_bytes(), n));
            }
        }
        // A negative hash is made positive by masking the sign bit, as Java's toPositive does.
        assert_eq!(
            partition_for(b"21", 1000),
            (-973_932_308_i32 & 0x7fff_ffff) % 1000
        );
    }
}
