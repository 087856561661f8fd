//! Decision letters as minimal, valid one-page PDFs (Helvetica text, exact xref offsets).

use crate::store::{AuthRequest, Status};

/// Renders lines of text as a one-page PDF (US Letter, Helvetica 11 pt).
pub fn text_pdf(title: &str, lines: &[String]) -> Vec<u8> {
    let mut content = String::from("BT\n/F1 16 Tf\n72 720 Td\n18 TL\n");
    content.push_str(&format!("({}) Tj\nT* T*\n/F1 11 Tf\n15 TL\n", pdf_text(title)));
    for line in lines {
        content.push_str(&format!("({}) Tj\nT*\n", pdf_text(line)));
    }
    content.push_str("ET\n");

    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>".to_string(),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_string(),
        format!("<< /Length {} >>\nstream\n{content}endstream", content.len()),
    ];
    let mut out = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref_at = out.len();
    let mut xref = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for off in offsets {
        xref.push_str(&format!("{off:010} 00000 n \n"));
    }
    xref.push_str(&format!(
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n",
        objects.len() + 1
    ));
    out.extend_from_slice(xref.as_bytes());
    out
}

/// Escapes a string for a PDF literal; non-ASCII becomes `?` (the letters are ASCII).
fn pdf_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

/// The decision letter for a decided request.
pub fn letter(payer: &str, r: &AuthRequest) -> Vec<u8> {
    let day = |d: Option<chrono::NaiveDate>| d.map(|d| d.format("%m/%d/%Y").to_string()).unwrap_or_default();
    let mut lines = vec![
        format!(
            "Date: {}",
            r.decided_at
                .map(|d| d.format("%m/%d/%Y").to_string())
                .unwrap_or_default()
        ),
        format!("To: {} (NPI {})", r.provider_name, r.provider_npi),
        format!("Member: {} (ID {})", r.member_name, r.member_id),
        format!("Reference number: {}", r.reference),
        format!(
            "Requested service dates: {} - {}",
            day(Some(r.service_start)),
            day(Some(r.service_end))
        ),
        String::new(),
    ];
    let title = match r.status {
        Status::Denied => {
            lines.push("We have reviewed your request for prior authorization and it is DENIED.".into());
            if let Some(d) = &r.denial {
                lines.push(format!("Denial reason: {} - {}", d.code, d.text));
            }
            lines.push("You may appeal this decision or request a peer-to-peer review".into());
            lines.push("within 60 days of the date of this letter.".into());
            "Notice of Denial of Prior Authorization"
        }
        _ => {
            let what = if r.status == Status::PartiallyApproved {
                "PARTIALLY APPROVED"
            } else {
                "APPROVED"
            };
            lines.push(format!(
                "We have reviewed your request for prior authorization and it is {what}."
            ));
            lines.push(format!(
                "Authorization number: {}",
                r.auth_number.as_deref().unwrap_or("")
            ));
            lines.push(format!("Valid from {} to {}", day(r.valid_from), day(r.valid_to)));
            for l in &r.lines {
                lines.push(format!(
                    "Procedure {}: requested {} units, approved {} units",
                    l.code,
                    l.units,
                    l.approved_units.unwrap_or(0)
                ));
            }
            "Prior Authorization Approval"
        }
    };
    lines.push(String::new());
    lines.push(format!("{payer} - Utilization Management"));
    lines.push("This letter was produced by the precert sandbox payer. Synthetic data.".into());
    text_pdf(&format!("{payer}: {title}"), &lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xref_offsets_point_at_their_objects() {
        let pdf = text_pdf("T (x)", &["hello".into()]);
        // Everything after the 15-byte header (with its binary comment) is ASCII.
        let text = std::str::from_utf8(&pdf[15..]).unwrap();
        let xref_at: usize = text
            .rsplit("startxref\n")
            .next()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(pdf[xref_at..].starts_with(b"xref"));
        let offsets: Vec<usize> = text[xref_at - 15..]
            .lines()
            .skip(3)
            .take(5)
            .map(|l| l[..10].parse().unwrap())
            .collect();
        for (i, off) in offsets.iter().enumerate() {
            assert!(pdf[*off..].starts_with(format!("{} 0 obj", i + 1).as_bytes()));
        }
    }
}
