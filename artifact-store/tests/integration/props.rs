use artifact_store::{Digest, Query};
use proptest::prelude::*;

use crate::support::{art, store};

/// Any bytes: empty, one byte, small, and multi-MiB (compressible or not).
fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        any::<u8>().prop_map(|b| vec![b]),
        proptest::collection::vec(any::<u8>(), 0..70_000),
        (1usize..4, any::<u8>(), any::<bool>()).prop_map(|(mib, seed, noisy)| {
            let mut x = seed as u64 | 1;
            (0..mib << 20)
                .map(|i| {
                    if noisy {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    } else {
                        (i / 100) as u8 ^ seed
                    }
                })
                .collect()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn put_get_round_trip(data in any_bytes()) {
        let (_d, s) = store();
        let r = s.add_bytes(art("t", "r"), &data).unwrap();
        prop_assert_eq!(r.digest, Digest::of(&data));
        prop_assert_eq!(r.raw_size, data.len() as u64);
        prop_assert_eq!(s.get(&r.id).unwrap(), data.clone());
        let mut out = Vec::new();
        prop_assert_eq!(s.read_to(&r.id, &mut out).unwrap(), data.len() as u64);
        prop_assert_eq!(out, data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn bundle_round_trip(
        items in proptest::collection::vec((0u8..3, 0u8..3, proptest::collection::vec(any::<u8>(), 0..5000)), 0..8),
        meta in "[a-z]{0,6}",
    ) {
        let (d, s) = store();
        for (t, r, data) in &items {
            s.add_bytes(art(&format!("t{t}"), &format!("r{r}")).meta("m", meta.clone()), data).unwrap();
        }
        let path = d.path().join("b.tar.zst");
        let sum = s.export_bundle(&Query::new(), &path).unwrap();
        prop_assert_eq!(sum.records, items.len() as u64);
        let (_d2, t) = store();
        let imp = t.import_bundle(&path).unwrap();
        prop_assert_eq!(imp.records_added, items.len() as u64);
        let mut a = s.query(&Query::new()).unwrap();
        let mut b = t.query(&Query::new()).unwrap();
        a.sort_by(|x, y| x.id.cmp(&y.id));
        b.sort_by(|x, y| x.id.cmp(&y.id));
        prop_assert_eq!(&a, &b);
        for r in &b {
            prop_assert_eq!(t.get(&r.id).unwrap(), s.get(&r.id).unwrap());
        }
    }
}
