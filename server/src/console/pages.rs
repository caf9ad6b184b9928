//! The console's pages: log-in, Secrets (with the Add, Delete and Share dialogs), Shared
//! (grants given, with Revoke) and Dashboard (widgets and the launch dialog). Lists come from
//! the domain layer; no value is ever fetched, so none can be rendered.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use secrets_core::api::SecretInfo;

use super::Console;
use super::html::{esc, login_page, page};
use crate::domain::sessions::Session;
use crate::error::ApiError;

/// The log-in page with `status`.
pub(super) fn login(status: StatusCode, error: Option<&str>) -> Response {
    (status, Html(login_page(error))).into_response()
}

/// `GET /`: the log-in form, or the Secrets tab for a live session.
pub(super) async fn root(State(c): State<Console>, h: HeaderMap) -> Response {
    match c.session(&h).await {
        Ok(Some(_)) => Redirect::to("/secrets").into_response(),
        Ok(None) => login(StatusCode::OK, None),
        Err(e) => login(e.status(), Some(&e.to_string())),
    }
}

/// The session, or the answer that sends the browser to log in.
async fn need_session(c: &Console, h: &HeaderMap) -> Result<Session, Response> {
    match c.session(h).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Redirect::to("/").into_response()),
        Err(e) => Err(login(e.status(), Some(&e.to_string()))),
    }
}

/// The secrets `s` may read (own first, then shared).
async fn list(c: &Console, s: &Session) -> Result<Vec<SecretInfo>, ApiError> {
    Ok(c.svc.domain.list_secrets(&s.principal).await?)
}

/// A secret as `neuro secret ls` names it: `KEY` when own, `secret:/OWNER/KEY` when shared.
fn shown(s: &Session, i: &SecretInfo) -> String {
    if i.owner == s.user {
        i.key.clone()
    } else {
        format!("secret:/{}/{}", i.owner, i.key)
    }
}

fn failure_page(s: &Session, title: &str, e: &ApiError) -> Response {
    let main = format!(
        "<h1>{}</h1><p role=\"alert\" class=\"error\">{}</p>",
        esc(title),
        esc(&e.to_string())
    );
    (
        e.status(),
        Html(page(title, title, &s.user, &s.csrf, &main)),
    )
        .into_response()
}

/// `GET /secrets`: the Secrets tab.
pub(super) async fn secrets(State(c): State<Console>, h: HeaderMap) -> Response {
    let s = match need_session(&c, &h).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let t0 = std::time::Instant::now();
    let items = match list(&c, &s).await {
        Ok(v) => v,
        Err(e) => return failure_page(&s, "Secrets", &e),
    };
    let mut m = String::with_capacity(256 * items.len() + 4096);
    m.push_str(
        "<div class=\"bar\"><h1>Secrets</h1>\
         <button type=\"button\" data-open=\"add-dialog\">Add</button></div>\
         <table id=\"secrets\"><caption>Secrets you may read: your own by KEY, shared ones \
         as secret:/OWNER/KEY. Values are never shown.</caption><thead><tr>\
         <th scope=\"col\">KEY</th><th scope=\"col\">Version</th>\
         <th scope=\"col\">Last change</th><th scope=\"col\">Actions</th></tr></thead><tbody>",
    );
    for i in &items {
        let name = esc(&shown(&s, i));
        let changed = match &i.updated_at {
            Some(t) => format!(
                "<time datetime=\"{t}\">{}</time>",
                esc(&t.replace('T', " "))
            ),
            None => "unknown".to_owned(),
        };
        let _ = write!(
            m,
            "<tr><th scope=\"row\">{name}</th><td>{v}</td><td>{changed}</td><td>",
            v = i.version
        );
        if i.owner == s.user {
            let _ = write!(
                m,
                "<button type=\"button\" data-share=\"{name}\" aria-label=\"Share {name}\">\
                 Share</button> <button type=\"button\" class=\"danger\" data-delete=\"{name}\" \
                 aria-label=\"Delete {name}\">Delete</button>"
            );
        }
        m.push_str("</td></tr>");
    }
    m.push_str("</tbody></table>");
    if items.is_empty() {
        m.push_str("<p id=\"empty\">No secrets yet: click Add.</p>");
    }
    m.push_str(DIALOGS);
    tracing::debug!(
        rows = items.len(),
        ms = t0.elapsed().as_millis() as u64,
        "secrets page"
    );
    Html(page("Secrets", "Secrets", &s.user, &s.csrf, &m)).into_response()
}

const DIALOGS: &str = "\
<dialog id=\"add-dialog\" aria-labelledby=\"add-title\"><form data-action=\"add\">\
<h2 id=\"add-title\">Add a secret</h2>\
<label for=\"add-key\">Key</label><input id=\"add-key\" name=\"key\" autocomplete=\"off\" required>\
<label for=\"add-value\">Value</label><textarea id=\"add-value\" name=\"value\" rows=\"4\" \
autocomplete=\"off\" spellcheck=\"false\"></textarea>\
<label for=\"add-file\">Or take the value from a file (bytes exact)</label>\
<input id=\"add-file\" name=\"file\" type=\"file\">\
<p role=\"alert\" class=\"error\" hidden></p>\
<div class=\"buttons\"><button type=\"submit\">Confirm</button>\
<button type=\"button\" data-close>Cancel</button></div></form></dialog>\
<dialog id=\"delete-dialog\" role=\"alertdialog\" aria-labelledby=\"delete-title\" \
aria-describedby=\"delete-text\"><form data-action=\"delete\">\
<h2 id=\"delete-title\">Delete secret</h2><p id=\"delete-text\"></p>\
<input type=\"hidden\" name=\"key\">\
<p role=\"alert\" class=\"error\" hidden></p>\
<div class=\"buttons\"><button type=\"submit\" class=\"danger\">Delete</button>\
<button type=\"button\" data-close>Cancel</button></div></form></dialog>\
<dialog id=\"share-dialog\" aria-labelledby=\"share-title\"><form data-action=\"share\">\
<h2 id=\"share-title\">Share</h2><input type=\"hidden\" name=\"key\">\
<label for=\"share-user\">User</label><input id=\"share-user\" name=\"user\" autocomplete=\"off\" required>\
<label for=\"share-action\">Permission</label><select id=\"share-action\" name=\"action\">\
<option value=\"read\">read</option><option value=\"write\">write</option>\
<option value=\"manage\">manage</option></select>\
<p role=\"alert\" class=\"error\" hidden></p>\
<div class=\"buttons\"><button type=\"submit\">Confirm</button>\
<button type=\"button\" data-close>Cancel</button></div></form></dialog>";

/// `GET /shared`: the grants the user gave, each with Revoke.
pub(super) async fn shared(State(c): State<Console>, h: HeaderMap) -> Response {
    let s = match need_session(&c, &h).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let grants = match c.svc.domain.list_shared(&s.principal, s.name()).await {
        Ok(g) => g,
        Err(e) => return failure_page(&s, "Shared", &e.into()),
    };
    let mut m = String::from(
        "<h1>Shared</h1><table id=\"grants\"><caption>What you have shared, and with whom\
         </caption><thead><tr><th scope=\"col\">URI</th><th scope=\"col\">User</th>\
         <th scope=\"col\">Permission</th><th scope=\"col\">Actions</th></tr></thead><tbody>",
    );
    for g in &grants {
        let _ = write!(
            m,
            "<tr><th scope=\"row\">{uri}</th><td>{user}</td><td>{action}</td><td>\
             <button type=\"button\" data-revoke-user=\"{user}\" data-revoke-uri=\"{uri}\">\
             Revoke</button></td></tr>",
            uri = esc(&g.uri),
            user = esc(&g.user),
            action = esc(&g.action.to_string()),
        );
    }
    m.push_str("</tbody></table><p role=\"alert\" class=\"error\" id=\"page-error\" hidden></p>");
    if grants.is_empty() {
        m.push_str(
            "<p>You have shared nothing. Share from the Secrets tab or with neuro share.</p>",
        );
    }
    Html(page("Shared", "Shared", &s.user, &s.csrf, &m)).into_response()
}

/// The dashboard's widgets: name, image, command.
const WIDGETS: [(&str, &str, &str); 3] = [
    ("Terminal", "ubuntu:24.04", "bash"),
    (
        "Jupyter",
        "quay.io/jupyter/base-notebook",
        "start-notebook.py",
    ),
    ("Custom command", "", ""),
];

/// `GET /dashboard`: the widgets, each with RUN, and the launch dialog.
pub(super) async fn dashboard(State(c): State<Console>, h: HeaderMap) -> Response {
    let s = match need_session(&c, &h).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let items = match list(&c, &s).await {
        Ok(v) => v,
        Err(e) => return failure_page(&s, "Dashboard", &e),
    };
    let mut m = String::from("<h1>Dashboard</h1><div class=\"widgets\">");
    for (i, (name, image, command)) in WIDGETS.iter().enumerate() {
        let shown_cmd = if command.is_empty() {
            "your command"
        } else {
            command
        };
        let _ = write!(
            m,
            "<section class=\"card\" aria-labelledby=\"w{i}\"><h2 id=\"w{i}\">{name}</h2>\
             <p>{img}</p><p><code>{cmd}</code></p>\
             <button type=\"button\" data-run-image=\"{image}\" data-run-command=\"{command}\" \
             aria-label=\"RUN {name}\">RUN</button></section>",
            img = if image.is_empty() { "any image" } else { image },
            cmd = esc(shown_cmd),
        );
    }
    m.push_str("</div><template id=\"secret-options\">");
    for i in &items {
        let uri = if i.owner == s.user {
            format!("secret:{}", i.key)
        } else {
            format!("secret:/{}/{}", i.owner, i.key)
        };
        let _ = write!(
            m,
            "<option value=\"{}\">{}</option>",
            esc(&uri),
            esc(&shown(&s, i))
        );
    }
    m.push_str(LAUNCH);
    Html(page("Dashboard", "Dashboard", &s.user, &s.csrf, &m)).into_response()
}

const LAUNCH: &str = "</template>\
<dialog id=\"launch-dialog\" aria-labelledby=\"launch-title\"><form data-action=\"launch\">\
<h2 id=\"launch-title\">Run a job</h2>\
<label for=\"launch-image\">Image</label><input id=\"launch-image\" name=\"image\" required>\
<label for=\"launch-command\">Command</label><input id=\"launch-command\" name=\"command\" required \
aria-describedby=\"command-help\"><p id=\"command-help\" class=\"help\">Words split at spaces, \
as a shell would without quotes.</p>\
<fieldset><legend>Secrets</legend><div id=\"secret-rows\"></div>\
<button type=\"button\" id=\"add-secret-row\">ADD NEW SECRET</button></fieldset>\
<p role=\"alert\" class=\"error\" hidden></p>\
<div class=\"buttons\"><button type=\"submit\">RUN</button>\
<button type=\"button\" data-close>Cancel</button></div></form>\
<section id=\"job-result\" hidden aria-labelledby=\"job-title\"><h2 id=\"job-title\">Job created</h2>\
<p role=\"status\">Job <code id=\"job-id\" tabindex=\"-1\"></code>, its token expires at <span id=\"job-expires\">\
</span>.</p><h3>Mappings</h3><ul id=\"job-mappings\"></ul>\
<h3>The same job from the CLI</h3><pre><code id=\"job-run-line\"></code></pre>\
<p><a id=\"job-manifest\" href=\"#\">Download manifest</a> (a Pod and the Secret that holds the \
job token: keep it private)</p><p role=\"alert\" class=\"error\" hidden></p>\
<div class=\"buttons\"><button type=\"button\" id=\"job-revoke\">Revoke job</button>\
<button type=\"button\" data-close>Close</button></div></section></dialog>";
