//! Attaching a letter that came by fax or mail: a PDF uploaded on the case
//! page, kept as a letter the portal gave would be (the same checks, the
//! same place under the data directory, `0600`, named and identified by
//! its SHA-256), and an event in the case's timeline with the user's name,
//! how it came and their note.
//!
//! A bad file (not a PDF, empty, too large) is refused with what is wrong
//! and nothing is stored. The name the file had on the user's computer is
//! not kept: it may name the patient.

use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::actions::{again, audit_action, done};
use super::auth::Viewer;
use super::pages::{bad_csrf, message, visible_case};
use super::App;
use crate::files::{letter_path, sha256_hex, write_private, MAX_LETTER_BYTES, MIN_LETTER_BYTES};
use crate::store::{Actor, EventKind, Letter};

/// The request body the upload route reads: the largest letter and the
/// form's other fields. A larger body is cut off by the listener.
pub const MAX_BODY_BYTES: usize = MAX_LETTER_BYTES + 1024 * 1024;

/// How a letter reached the practice, as the form offers it.
const RECEIVED: &[&str] = &["fax", "mail", "portal", "other"];

/// The form as it arrived.
#[derive(Default)]
struct Upload {
    csrf: String,
    note: String,
    received: String,
    /// The file's bytes, up to one more than the limit.
    file: Option<Vec<u8>>,
    /// The file had more bytes than the limit (the rest was not kept).
    too_large: bool,
}

/// Reads the form, keeping at most `MAX_LETTER_BYTES + 1` of the file.
async fn read(mut form: Multipart) -> Result<Upload, String> {
    let broken = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too large".to_owned()
        } else {
            format!("the upload did not arrive whole ({e}); try again")
        }
    };
    let mut up = Upload::default();
    while let Some(mut field) = form.next_field().await.map_err(broken)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(broken)? {
                    // Past the limit the rest is read and dropped, so the
                    // browser gets the answer rather than a reset connection.
                    if bytes.len() + chunk.len() > MAX_LETTER_BYTES {
                        up.too_large = true;
                    } else {
                        bytes.extend_from_slice(&chunk);
                    }
                }
                up.file = Some(bytes);
            }
            name @ ("csrf" | "note" | "received") => {
                let text = field.text().await.map_err(broken)?;
                match name {
                    "csrf" => up.csrf = text,
                    "note" => up.note = text,
                    _ => up.received = text,
                }
            }
            _ => {}
        }
    }
    Ok(up)
}

/// What is wrong with a file offered as a letter, if anything.
pub fn letter_problem(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return Some("The file is empty. Nothing was stored.".into());
    }
    if !bytes.starts_with(b"%PDF-") {
        return Some(
            "The file is not a PDF (it does not begin with %PDF-). Scan or save the letter as a PDF and attach that. \
             Nothing was stored."
                .into(),
        );
    }
    if bytes.len() < MIN_LETTER_BYTES {
        return Some(format!(
            "The file is only {} bytes: too small to be a letter. Nothing was stored.",
            bytes.len()
        ));
    }
    None
}

/// `POST /cases/P/C/letters`: attaches a letter received by fax or mail.
pub async fn attach_letter(
    State(app): State<App>,
    viewer: Viewer,
    Path((practice, case_ref)): Path<(String, String)>,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    let Ok(form) = form else {
        return bad_csrf(&app, Some(&viewer));
    };
    let up = match read(form).await {
        Ok(up) => up,
        Err(e) if e == "too large" => Upload {
            too_large: true,
            ..Upload::default()
        },
        Err(e) => {
            return message(
                &app,
                Some(&viewer),
                StatusCode::BAD_REQUEST,
                "Letter not attached",
                &format!("The file could not be read: {e}. Nothing was stored."),
            )
        }
    };
    // A body cut off before its token came is refused as too large when the
    // session's token is not there to check: nothing is stored either way.
    if !up.too_large && !viewer.csrf_ok(&up.csrf) {
        return bad_csrf(&app, Some(&viewer));
    }
    let case = match visible_case(&app, &viewer, &practice, &case_ref).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let refuse = |text: String| again(&app, &viewer, &case, StatusCode::UNPROCESSABLE_ENTITY, text);
    if up.too_large {
        return refuse(format!(
            "The file is larger than {} MB, the most precert keeps for a letter. Nothing was stored.",
            MAX_LETTER_BYTES / (1024 * 1024)
        ))
        .await;
    }
    let Some(bytes) = up.file else {
        return refuse("Choose the letter's PDF file to attach.".into()).await;
    };
    if let Some(problem) = letter_problem(&bytes) {
        return refuse(problem).await;
    }
    let received = up.received.trim();
    if !RECEIVED.contains(&received) {
        return refuse("Say how the letter came: by fax, by mail, from the portal, or otherwise.".into()).await;
    }
    let note = up.note.trim().to_owned();
    if note.is_empty() {
        return refuse(
            "Say what the letter is in the note (from whom, of which date): it goes into the case's timeline.".into(),
        )
        .await;
    }
    let sha256 = sha256_hex(&bytes);
    let rel = letter_path(&case.data.practice_id, &case.data.case_ref, &sha256, "letter");
    let target = app.settings.data_dir.join(&rel);
    let size = bytes.len() as u64;
    let written = tokio::task::spawn_blocking(move || write_private(&target, &bytes)).await;
    if let Err(e) = written.map_err(std::io::Error::other).and_then(|r| r) {
        tracing::error!(case_id = case.id, error = %e, "Console: an attached letter could not be stored.");
        return message(
            &app,
            Some(&viewer),
            StatusCode::SERVICE_UNAVAILABLE,
            "Letter not attached",
            "The letter could not be written to the data directory; nothing was recorded. Try again, and tell your administrator if it happens again.",
        );
    }
    let letter = Letter {
        kind: "letter".into(),
        stored_path: rel,
        sha256: sha256.clone(),
        bytes: size,
        media_type: "application/pdf".into(),
        fetched_at: None,
    };
    let actor = Actor::user(viewer.name());
    match app.ledger.add_letter(case.id, &letter, &actor).await {
        Ok(true) => {}
        Ok(false) => {
            return refuse("This letter is kept for this case already (the same file): nothing was added.".into()).await
        }
        Err(e) => return super::unavailable(&e),
    }
    let event = json!({
        "console": "letter attached",
        "received": format!("by {received}"),
        "note": note,
        "sha256": sha256,
    });
    if let Err(e) = app.ledger.append_event(case.id, EventKind::Note, &actor, &event).await {
        return super::unavailable(&e);
    }
    audit_action(
        &app,
        &viewer,
        &case,
        "attach_letter",
        json!({ "sha256": sha256, "bytes": size, "received": received }),
    )
    .await;
    done(&case, "letter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pdf_of_a_plausible_size_is_a_letter() {
        assert!(letter_problem(b"").unwrap().contains("empty"));
        assert!(
            letter_problem(b"PK\x03\x04 a zip file, not a letter at all, padded out to be long enough")
                .unwrap()
                .contains("not a PDF")
        );
        assert!(letter_problem(b"%PDF-1.4\n%%EOF").unwrap().contains("too small"));
        let mut pdf = b"%PDF-1.4\n".to_vec();
        pdf.resize(MIN_LETTER_BYTES, b' ');
        assert_eq!(letter_problem(&pdf), None);
    }
}
