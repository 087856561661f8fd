//! Letters and failure artifacts, served to the people who may see the
//! case. Each download is audited (the console's audit, and the case's
//! timeline for letters and page captures); every file is `no-store`.
//!
//! Only files the ledger names are served: a letter by its place in the
//! case's list, an artifact by the run event that recorded its folder and
//! a file name from that folder's listing, and only under the data
//! directory. A portal's page HTML is sent as text to download, never as a
//! page of the console's origin.

use std::path::{Component, Path as FsPath, PathBuf};

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Viewer;
use super::case_page::artifact_files;
use super::pages::{no_such_case, visible_case};
use super::App;
use crate::case::CaseRecord;
use crate::files::safe_name;
use crate::store::{Actor, AuditEntry, EventKind};

/// `path` inside `root`, or None when it would leave it.
fn inside(root: &FsPath, path: &FsPath) -> Option<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        root.join(path)
    };
    if joined.components().any(|c| matches!(c, Component::ParentDir)) {
        return None;
    }
    let (Ok(real), Ok(root)) = (joined.canonicalize(), root.canonicalize()) else {
        return None;
    };
    real.starts_with(&root).then_some(real)
}

fn file_response(bytes: Vec<u8>, content_type: &str, disposition: &str, file_name: &str) -> Response {
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{}\"", safe_name(file_name))) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

async fn record(app: &App, viewer: &Viewer, case: &CaseRecord, what: &str, timeline: bool) -> Result<(), Response> {
    let entry = AuditEntry {
        user: viewer.name(),
        action: "download",
        practice: Some(&case.data.practice_id),
        case_id: Some(case.id),
        remote: viewer.remote.as_deref(),
        detail: json!({ "file": what }),
    };
    app.audit(entry).await.map_err(|e| super::unavailable(&e))?;
    if timeline {
        let event = json!({ "console": "downloaded", "file": what, "from": viewer.remote });
        app.ledger
            .append_event(case.id, EventKind::Note, &Actor::user(viewer.name()), &event)
            .await
            .map_err(|e| super::unavailable(&e))?;
    }
    Ok(())
}

/// `/cases/P/C/letters/N`: the N-th letter kept for the case (from 1).
pub async fn letter(
    State(app): State<App>,
    viewer: Viewer,
    Path((practice, case_ref, n)): Path<(String, String, usize)>,
) -> Response {
    let case = match visible_case(&app, &viewer, &practice, &case_ref).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let letters = match app.ledger.letters(case.id).await {
        Ok(l) => l,
        Err(e) => return super::unavailable(&e),
    };
    let Some(letter) = n.checked_sub(1).and_then(|i| letters.get(i)) else {
        return no_such_case(&app, &viewer);
    };
    let Some(path) = inside(&app.settings.data_dir, &letter.stored_path) else {
        tracing::warn!(
            case_id = case.id,
            "A letter's file is missing or outside the data directory."
        );
        return no_such_case(&app, &viewer);
    };
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(case_id = case.id, error = %e, "A letter's file cannot be read.");
            return no_such_case(&app, &viewer);
        }
    };
    if let Err(r) = record(&app, &viewer, &case, &format!("letter {n} ({})", letter.kind), true).await {
        return r;
    }
    // Only a PDF is named as what it is; anything else downloads as bytes.
    let (content_type, ext) = match letter.media_type.as_str() {
        "application/pdf" => ("application/pdf", "pdf"),
        _ => ("application/octet-stream", "bin"),
    };
    let name = format!("{}-{}-{n}.{ext}", case.data.case_ref, letter.kind);
    file_response(bytes, content_type, "attachment", &name)
}

/// `/cases/P/C/runs/EVENT/FILE`: a file a failed run left.
pub async fn artifact(
    State(app): State<App>,
    viewer: Viewer,
    Path((practice, case_ref, event, file)): Path<(String, String, i64, String)>,
) -> Response {
    let case = match visible_case(&app, &viewer, &practice, &case_ref).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let events = match app.ledger.events(case.id).await {
        Ok(e) => e,
        Err(e) => return super::unavailable(&e),
    };
    let dir = events
        .iter()
        .find(|e| e.id == event)
        .and_then(|e| e.detail.get("artifacts"))
        .and_then(|v| v.as_str())
        .map(PathBuf::from);
    let artifacts_root = app.settings.data_dir.join("artifacts");
    let found = dir
        .filter(|d| artifact_files(d).contains(&file))
        .and_then(|d| inside(&artifacts_root, &d.join(&file)));
    let Some(path) = found else {
        return no_such_case(&app, &viewer);
    };
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(_) => return no_such_case(&app, &viewer),
    };
    let (content_type, disposition) = if file.ends_with(".png") {
        ("image/png", "inline")
    } else {
        ("text/plain; charset=utf-8", "attachment")
    };
    // The screenshot shows on the case page each time it is opened: it is
    // in the console's audit; the page's HTML and the trace, downloaded,
    // go into the timeline too.
    if let Err(r) = record(
        &app,
        &viewer,
        &case,
        &format!("run {event} {file}"),
        !file.ends_with(".png"),
    )
    .await
    {
        return r;
    }
    file_response(bytes, content_type, disposition, &file)
}
