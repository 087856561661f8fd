//! Pages fetched by a `fetch` step, read without a browser: the same
//! conditions, selector reads, label-relative reads and table rows the
//! engine reads in the browser (`exec.rs`'s page scripts), over the HTML as
//! the portal sent it (no scripts run).
//!
//! The parsed document is never kept across an `await` (scraper's tree is
//! not `Send`): each read parses the text again, which for a portal page is
//! well under a millisecond.

use scraper::{ElementRef, Html, Selector};

/// A fetched HTML page.
#[derive(Clone, Debug)]
pub struct FetchedPage {
    /// Where it came from, after redirects.
    pub url: String,
    pub body: String,
}

fn selector(css: &str) -> Result<Selector, String> {
    Selector::parse(css).map_err(|e| format!("`{css}` is not a CSS selector: {e}"))
}

/// Text with runs of white space as one space, trimmed.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An element's text content, squashed (as `textContent` in the page
/// scripts).
fn text_of(el: ElementRef<'_>) -> String {
    squash(&el.text().collect::<String>())
}

impl FetchedPage {
    fn doc(&self) -> Html {
        Html::parse_document(&self.body)
    }

    /// Whether an element matches.
    pub fn present(&self, css: &str) -> Result<bool, String> {
        let sel = selector(css)?;
        Ok(self.doc().select(&sel).next().is_some())
    }

    /// The page's text (the body's, without scripts and styles).
    pub fn text(&self) -> String {
        let doc = self.doc();
        let mut out = String::new();
        for node in doc.root_element().descendants() {
            if let Some(t) = node.value().as_text() {
                let hidden = node
                    .parent()
                    .and_then(|p| {
                        p.value()
                            .as_element()
                            .map(|e| matches!(e.name(), "script" | "style" | "title"))
                    })
                    .unwrap_or(false);
                if !hidden {
                    out.push_str(t);
                    out.push(' ');
                }
            }
        }
        squash(&out)
    }

    /// The first match's text, or its attribute; `None` when nothing matches.
    pub fn read(&self, css: &str, attribute: Option<&str>) -> Result<Option<String>, String> {
        let sel = selector(css)?;
        let doc = self.doc();
        Ok(doc.select(&sel).next().map(|el| match attribute {
            Some(a) => el.value().attr(a).unwrap_or_default().to_owned(),
            None => value_of(el, None),
        }))
    }

    /// The value next to a label (see `LABEL_JS` in `exec.rs`, whose rules
    /// this follows): the `dd` after a `dt`, the cell beside or below a
    /// `th`, the field a `label` is for, or the element after any other
    /// element whose own text is the label.
    pub fn label(&self, label: &str, within: Option<&str>, attribute: Option<&str>) -> Result<Option<String>, String> {
        let doc = self.doc();
        let root = match within {
            None => doc.root_element(),
            Some(css) => match doc.select(&selector(css)?).next() {
                Some(el) => el,
                None => return Ok(None),
            },
        };
        let want = norm(label);
        let labels = selector("dt, th, label")?;
        let leaves = root
            .descendants()
            .filter_map(ElementRef::wrap)
            .filter(|e| e.children().all(|c| !c.value().is_element()));
        for el in root.select(&labels).chain(leaves) {
            if norm(&text_of(el)) != want {
                continue;
            }
            if let Some(v) = beside(&doc, el) {
                return Ok(Some(value_of(v, attribute)));
            }
        }
        Ok(None)
    }

    /// Each row's cell texts, and the next page's address when a
    /// `next_css` link has one. A "next" control that is not a link cannot
    /// be followed without a browser: `Err`.
    pub fn rows(
        &self,
        row_css: &str,
        cell_css: &[String],
        next_css: Option<&str>,
    ) -> Result<(Vec<Vec<String>>, Option<String>), String> {
        let doc = self.doc();
        let cells: Vec<Selector> = cell_css.iter().map(|c| selector(c)).collect::<Result<_, _>>()?;
        let rows = doc
            .select(&selector(row_css)?)
            .map(|r| {
                cells
                    .iter()
                    .map(|c| r.select(c).next().map(text_of).unwrap_or_default())
                    .collect()
            })
            .collect();
        let next = match next_css {
            None => None,
            Some(css) => match doc.select(&selector(css)?).next() {
                None => None,
                Some(n) => {
                    let href = n.value().attr("href").unwrap_or_default();
                    if href.is_empty() || href.starts_with('#') || href.to_ascii_lowercase().starts_with("javascript:")
                    {
                        return Err(format!(
                            "the next-page control `{css}` is not a link: a fetched page cannot click it"
                        ));
                    }
                    Some(href.to_owned())
                }
            },
        };
        Ok((rows, next))
    }
}

/// A label's text as compared: squashed, a trailing `:` dropped, lower case.
fn norm(s: &str) -> String {
    let s = squash(s);
    s.trim_end_matches(':').trim_end().to_lowercase()
}

fn value_of(el: ElementRef<'_>, attribute: Option<&str>) -> String {
    if let Some(a) = attribute {
        return el.value().attr(a).unwrap_or_default().to_owned();
    }
    match el.value().name() {
        "input" => el.value().attr("value").unwrap_or_default().to_owned(),
        "select" => {
            let chosen = Selector::parse("option[selected]").expect("a valid selector");
            let first = Selector::parse("option").expect("a valid selector");
            el.select(&chosen)
                .next()
                .or_else(|| el.select(&first).next())
                .map(|o| o.value().attr("value").map(str::to_owned).unwrap_or_else(|| text_of(o)))
                .unwrap_or_default()
        }
        _ => text_of(el),
    }
}

fn next_element<'a>(el: ElementRef<'a>, tags: Option<&[&str]>) -> Option<ElementRef<'a>> {
    el.next_siblings()
        .filter_map(ElementRef::wrap)
        .find(|n| tags.is_none_or(|t| t.contains(&n.value().name())))
}

fn beside<'a>(doc: &'a Html, el: ElementRef<'a>) -> Option<ElementRef<'a>> {
    match el.value().name() {
        "dt" => next_element(el, Some(&["dd"])),
        "th" => {
            if let Some(cell) = next_element(el, Some(&["td"])) {
                return Some(cell);
            }
            // A column header: the cell below it in the first row with data.
            let row = el.parent().and_then(ElementRef::wrap)?;
            let table = el
                .ancestors()
                .filter_map(ElementRef::wrap)
                .find(|a| a.value().name() == "table")?;
            let col = row.children().filter_map(ElementRef::wrap).position(|c| c == el)?;
            let trs = Selector::parse("tr").expect("a valid selector");
            let tds = Selector::parse("td").expect("a valid selector");
            table
                .select(&trs)
                .find(|r| *r != row && r.select(&tds).next().is_some())
                .and_then(|r| r.children().filter_map(ElementRef::wrap).nth(col))
        }
        "label" => {
            if let Some(id) = el.value().attr("for").filter(|s| !s.is_empty()) {
                return doc
                    .root_element()
                    .descendants()
                    .filter_map(ElementRef::wrap)
                    .find(|e| e.value().id() == Some(id));
            }
            let field = Selector::parse("input, select, textarea").expect("a valid selector");
            el.select(&field).next().or_else(|| next_element(el, None))
        }
        _ => next_element(el, None),
    }
}
