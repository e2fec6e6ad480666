//! Config files (`settings::load_toml`: the TOML read, merged and validated exactly as
//! `omnirouter check-config`, start-up and every reload read the file, without the
//! environment): every section, every channel's and tenant's validation.
//!
//! Invariants: a refusal is an error naming what is wrong (never a panic); an accepted config
//! keeps the tree it was read from and has at least one tenant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omnirouter::settings::{error_chain, load_toml};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load_toml(text) {
        Ok(loaded) => {
            assert!(
                loaded.tree.get(&["tenants"]).is_some(),
                "a valid config has tenants"
            );
        }
        Err(e) => assert!(!error_chain(&e).is_empty()),
    }
});
