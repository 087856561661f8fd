//! Format checks for the identifiers and codes a request carries. Each returns a message
//! worded for the portal user, shown next to the field.

/// NPI: 10 digits, the last a Luhn check digit over `80840` + the first nine.
pub fn check_npi(npi: &str) -> Result<(), String> {
    if npi.len() != 10 || !npi.bytes().all(|b| b.is_ascii_digit()) {
        return Err("NPI must be exactly 10 digits.".into());
    }
    let digits = format!("80840{npi}");
    if luhn_valid(&digits) {
        Ok(())
    } else {
        Err("NPI check digit is not valid.".into())
    }
}

fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// CPT (5 digits, or 4 digits + `F`/`T`) or HCPCS Level II (a letter + 4 digits).
pub fn check_procedure(code: &str) -> Result<(), String> {
    let b = code.as_bytes();
    let ok = b.len() == 5
        && (b.iter().all(u8::is_ascii_digit)
            || (b[..4].iter().all(u8::is_ascii_digit) && matches!(b[4], b'F' | b'T'))
            || (b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_digit)));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{code}\" is not a valid CPT/HCPCS code (e.g. 73721, 0042T, E0601)."
        ))
    }
}

/// ICD-10-CM: letter, digit, alphanumeric, then optionally `.` and 1–4 alphanumerics.
pub fn check_icd10(code: &str) -> Result<(), String> {
    let b = code.as_bytes();
    let head_ok = b.len() >= 3
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && (b[2].is_ascii_uppercase() || b[2].is_ascii_digit());
    let tail = &b[3.min(b.len())..];
    let tail_ok = match tail.split_first() {
        None => true,
        Some((b'.', rest)) => {
            (1..=4).contains(&rest.len()) && rest.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        }
        Some(_) => false,
    };
    if head_ok && tail_ok {
        Ok(())
    } else {
        Err(format!("\"{code}\" is not a valid ICD-10-CM code (e.g. M17.11)."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npis_are_luhn_checked_with_the_80840_prefix() {
        assert!(check_npi("1245319599").is_ok());
        assert!(check_npi("1679576722").is_ok());
        assert!(check_npi("1245319598").is_err());
        assert!(check_npi("12453195").is_err());
    }

    #[test]
    fn procedure_codes() {
        for ok in ["73721", "0042T", "0001F", "E0601", "J1745"] {
            assert!(check_procedure(ok).is_ok(), "{ok}");
        }
        for bad in ["7372", "737211", "e0601", "0042X", "EE601"] {
            assert!(check_procedure(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn icd10_codes() {
        for ok in ["M17.11", "C50.911", "G89.4", "M54", "S72.001A"] {
            assert!(check_icd10(ok).is_ok(), "{ok}");
        }
        for bad in ["17.11", "M1", "M17.", "M17.12345", "M1711", "m17.11"] {
            assert!(check_icd10(bad).is_err(), "{bad}");
        }
    }
}
