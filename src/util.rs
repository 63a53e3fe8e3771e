//! Small helpers shared by the CLI, the config and the RPC layer.

/// Parses a size: a plain number of bytes, or a number with a unit `K`/`KB`/`KiB`,
/// `M`, `G`, `T` (all binary multiples; `B` alone means bytes). Case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num = num.replace('_', "");
    if num.is_empty() {
        return Err(format!("size `{s}` does not start with a number"));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        other => return Err(format!("size `{s}`: unknown unit `{other}`")),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| format!("size `{s}` is too large"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| format!("size `{s}`: `{num}` is not a number"))?;
    let v = f * mult as f64;
    if !(0.0..1.8e19).contains(&v) {
        return Err(format!("size `{s}` is out of range"));
    }
    Ok(v as u64)
}

/// Formats a byte count with a binary unit, for humans.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.2}{}", UNITS[u])
    }
}

/// Memory this process holds resident, in bytes (Linux: `/proc/self/statm`); `None`
/// where it cannot be read.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a configuration value; it takes no pointer.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touching 64 MiB shows in the resident count (tests run in parallel threads of
    /// one process, so only a lower bound on the growth holds).
    #[test]
    fn resident_bytes_grow_with_memory_touched() {
        let before = resident_bytes().expect("/proc/self/statm is readable");
        let held = vec![1u8; 64 << 20];
        let after = resident_bytes().expect("/proc/self/statm is readable");
        assert!(
            after >= before + (48 << 20),
            "resident {before} -> {after} after touching 64 MiB"
        );
        drop(std::hint::black_box(held));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("4 TiB").unwrap(), 4 << 40);
        assert!(parse_size("x").is_err());
        assert!(
            parse_size("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("99999999999P").is_err());
        assert_eq!(format_size(8 << 30), "8GiB");
        assert_eq!(format_size(1536), "1.50KiB");
    }
}
