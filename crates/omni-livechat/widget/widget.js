/*! omnirouter live chat widget. No dependencies. Embed with:
 *   <script src="https://chat.example.vn/v1/livechat/widget.js"
 *           data-tenant="demo" data-widget="web" async></script>
 * Optional attributes: data-lang="vi|en" (default: the page's <html lang>, then the browser's), data-title="…", data-user-id + data-user-hash (a
 * logged-in customer; the hash is hex HMAC-SHA256(identity secret, user id) computed by the
 * site's server), data-open="true" (start open).
 * Protocol: POST {base}/v1/livechat/{tenant}/{widget}/session → token; one WebSocket
 * {base}/v1/livechat/{tenant}/{widget}/ws?after=<cursor> with the subprotocols
 * ["omni.v1", "omni.token.<token>"] (the token never goes in a URL); see docs/channels.md. A revoked
 * token (error "token_revoked", or a session answered 401) is forgotten. The router's
 * wait estimate arrives as {"type":"queued","estimated_wait_secs":N} (shown until "assigned",
 * "ended", "left" or an agent's message); "End chat" sends {"type":"leave"}, confirmed by
 * {"type":"left"} or refused with the error "leave_failed". */
(function () {
  "use strict";
  if (window.OmniChat) return;
  var script = document.currentScript ||
    document.querySelector('script[src*="/v1/livechat/widget.js"][data-widget]');
  if (!script) return;
  var ds = script.dataset;
  var tenant = ds.tenant, widget = ds.widget;
  if (!tenant || !widget) { console.error("omnichat: data-tenant and data-widget are required"); return; }
  var base = new URL(script.src, location.href).origin;
  // The page's language first (the site knows its audience), then the browser's.
  var lang = (ds.lang || document.documentElement.lang || navigator.language || "vi").toLowerCase().indexOf("en") === 0 ? "en" : "vi";
  var T = {
    vi: {
      open: "Mở cửa sổ trò chuyện", close: "Đóng cửa sổ trò chuyện", title: "Hỗ trợ khách hàng",
      placeholder: "Nhập tin nhắn…", send: "Gửi", label: "Tin nhắn của bạn",
      welcome: "Xin chào! Chúng tôi có thể giúp gì cho bạn?",
      afterHours: "Hiện ngoài giờ làm việc. Bạn cứ để lại tin nhắn, chúng tôi sẽ trả lời sớm nhất.",
      connecting: "Đang kết nối…", reconnecting: "Mất kết nối, đang thử lại…", offline: "Bạn đang ngoại tuyến.",
      rateLimited: "Bạn gửi hơi nhanh, vui lòng đợi một chút.", failed: "Chưa gửi được, sẽ thử lại.",
      sending: "Đang gửi", you: "Bạn", agent: "Nhân viên hỗ trợ", typing: "Nhân viên đang soạn tin…",
      wait: "Thời gian chờ dự kiến: khoảng {n} phút", waitSoon: "Nhân viên sẽ hỗ trợ bạn ngay",
      end: "Kết thúc", endLabel: "Kết thúc trò chuyện", left: "Bạn đã kết thúc cuộc trò chuyện. Cần hỗ trợ thêm, bạn cứ nhắn tin mới.",
      leaveFailed: "Chưa kết thúc được cuộc trò chuyện, vui lòng thử lại.",
      stars: "Đánh giá {n} trên 5 sao", thanks: "Cảm ơn bạn đã đánh giá!"
    },
    en: {
      open: "Open chat", close: "Close chat", title: "Customer support",
      placeholder: "Type a message…", send: "Send", label: "Your message",
      welcome: "Hello! How can we help you?",
      afterHours: "We are outside our opening hours. Leave a message and we will reply as soon as we can.",
      connecting: "Connecting…", reconnecting: "Connection lost, retrying…", offline: "You are offline.",
      rateLimited: "You are sending quickly, please wait a moment.", failed: "Not sent yet, will retry.",
      sending: "Sending", you: "You", agent: "Support agent", typing: "An agent is typing…",
      wait: "Estimated wait: about {n} min", waitSoon: "An agent will be with you shortly",
      end: "End chat", endLabel: "End chat", left: "You ended the chat. Send a new message if you need more help.",
      leaveFailed: "Could not end the chat, please try again.",
      stars: "Rate {n} out of 5 stars", thanks: "Thank you for your rating!"
    }
  }[lang];
  var key = "omnichat:" + tenant + ":" + widget;
  var store = {
    get: function () { try { return JSON.parse(localStorage.getItem(key)) || {}; } catch (e) { return {}; } },
    set: function (v) { try { localStorage.setItem(key, JSON.stringify(v)); } catch (e) { /* private mode */ } }
  };
  var saved = store.get();
  var state = {
    token: saved.token || null, exp: saved.exp || 0, cursor: saved.cursor || null,
    ws: null, attempts: 0, timer: null, ping: null, open: false, online: true,
    seen: {}, pending: {}, outbox: [], leaving: false, left: false, resend: null, resends: 0
  };

  // ---- markup -------------------------------------------------------------------------
  var css = "#omni-chat-launcher{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;background:#0b63ce;color:#fff;display:flex;align-items:center;justify-content:center;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483000}" +
    "#omni-chat-launcher:focus-visible,#omni-chat-panel button:focus-visible,#omni-chat-input:focus-visible{outline:3px solid #ffbf47;outline-offset:2px}" +
    "#omni-chat-panel{position:fixed;right:20px;bottom:88px;width:340px;max-width:calc(100vw - 40px);height:460px;max-height:calc(100vh - 120px);display:flex;flex-direction:column;background:#fff;color:#1b1b1b;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.25);font:14px/1.4 system-ui,sans-serif;z-index:2147483000;overflow:hidden}" +
    "#omni-chat-panel[hidden]{display:none}" +
    "#omni-chat-panel header{display:flex;align-items:center;justify-content:space-between;padding:12px 14px;background:#0b63ce;color:#fff}" +
    "#omni-chat-panel h2{margin:0;font-size:16px}" +
    "#omni-chat-panel header button{background:transparent;border:0;color:#fff;font-size:22px;cursor:pointer;line-height:1}" +
    "#omni-chat-panel header div{display:flex;align-items:center;gap:10px}" +
    "#omni-chat-panel #omni-chat-end{font:600 12px system-ui,sans-serif;border:1px solid rgba(255,255,255,.8);border-radius:6px;padding:4px 8px;white-space:nowrap}" +
    "#omni-chat-panel #omni-chat-end:disabled{opacity:.55;cursor:default}" +
    "#omni-chat-wait{padding:6px 14px;background:#e8f1fc;color:#0b3d7a;font-size:13px}" +
    "#omni-chat-wait:empty{display:none}" +
    "#omni-chat-notice{padding:8px 14px;background:#fff4d6;color:#5c4300;font-size:13px}" +
    "#omni-chat-notice:empty{display:none}" +
    "#omni-chat-typing{padding:2px 14px 6px;color:#555;font-size:12px;font-style:italic;min-height:1em}" +
    "#omni-chat-log{flex:1;overflow-y:auto;padding:12px 14px;margin:0;list-style:none}" +
    ".omni-msg{max-width:80%;margin:6px 0;padding:8px 11px;border-radius:12px;white-space:pre-wrap;word-wrap:break-word}" +
    ".omni-visitor{margin-left:auto;background:#0b63ce;color:#fff;border-bottom-right-radius:3px}" +
    ".omni-agent{margin-right:auto;background:#eef1f5;border-bottom-left-radius:3px}" +
    ".omni-stars{display:flex;gap:2px;margin-top:6px}.omni-star{border:0;background:none;font-size:22px;line-height:1;color:#c4c9d0;cursor:pointer;padding:2px}.omni-star:hover,.omni-star:focus,.omni-star-on{color:#f5a623}.omni-star:disabled{cursor:default}" +
    ".omni-system{margin:6px auto;color:#555;font-size:13px;text-align:center}" +
    ".omni-pending{opacity:.6}" +
    ".omni-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}" +
    "#omni-chat-form{display:flex;gap:8px;padding:10px;border-top:1px solid #e3e6ea}" +
    "#omni-chat-input{flex:1;resize:none;height:40px;padding:9px 10px;border:1px solid #c4cad1;border-radius:8px;font:inherit}" +
    "#omni-chat-form button{padding:0 14px;border:0;border-radius:8px;background:#0b63ce;color:#fff;font:600 14px system-ui,sans-serif;cursor:pointer}";
  var style = document.createElement("style");
  style.textContent = css;
  document.head.appendChild(style);

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text) e.textContent = text;
    return e;
  }
  var launcher = el("button", {
    id: "omni-chat-launcher", type: "button", "aria-label": T.open,
    "aria-expanded": "false", "aria-controls": "omni-chat-panel"
  });
  // A speech bubble drawn inline: no emoji font or image request needed.
  launcher.innerHTML = '<svg width="28" height="28" viewBox="0 0 24 24" aria-hidden="true" focusable="false">' +
    '<path fill="currentColor" d="M12 3C6.5 3 2 6.6 2 11c0 2.4 1.3 4.6 3.4 6.1L4.6 21l4.3-2.4c1 .3 2 .4 3.1.4 5.5 0 10-3.6 10-8s-4.5-8-10-8z"/></svg>';
  var panel = el("section", {
    id: "omni-chat-panel", role: "dialog", "aria-modal": "false",
    "aria-labelledby": "omni-chat-title", hidden: "", lang: lang
  });
  var header = el("header", {});
  var title = el("h2", { id: "omni-chat-title" }, ds.title || T.title);
  var closeBtn = el("button", { type: "button", "aria-label": T.close }, "\u00D7");
  // Ends the conversation for the router (unlike ×, which only hides the panel).
  var endBtn = el("button", { id: "omni-chat-end", type: "button", "aria-label": T.endLabel }, T.end);
  var actions = el("div", {});
  actions.appendChild(endBtn);
  actions.appendChild(closeBtn);
  header.appendChild(title);
  header.appendChild(actions);
  var notice = el("div", { id: "omni-chat-notice", role: "status", "aria-live": "polite" });
  var waitLine = el("div", { id: "omni-chat-wait", role: "status", "aria-live": "polite" });
  var log = el("ol", { id: "omni-chat-log", role: "log", "aria-live": "polite", "aria-relevant": "additions" });
  var typingLine = el("div", { id: "omni-chat-typing", role: "status", "aria-live": "polite" });
  var form = el("form", { id: "omni-chat-form" });
  var label = el("label", { "for": "omni-chat-input", "class": "omni-sr" }, T.label);
  var input = el("textarea", { id: "omni-chat-input", rows: "1", placeholder: T.placeholder, maxlength: "4000" });
  var sendBtn = el("button", { type: "submit" }, T.send);
  form.appendChild(label);
  form.appendChild(input);
  form.appendChild(sendBtn);
  panel.appendChild(header);
  panel.appendChild(notice);
  panel.appendChild(waitLine);
  panel.appendChild(log);
  panel.appendChild(typingLine);
  panel.appendChild(form);
  function mount() {
    document.body.appendChild(panel);
    document.body.appendChild(launcher);
    system(T.welcome);
  }

  function system(text) {
    var li = el("li", { "class": "omni-msg omni-system" }, text);
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
  }
  function bubble(from, text, id) {
    var li = el("li", { "class": "omni-msg omni-" + from, "data-id": id || "" });
    li.appendChild(el("span", { "class": "omni-sr" }, (from === "visitor" ? T.you : T.agent) + ": "));
    li.appendChild(document.createTextNode(text));
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
    return li;
  }
  // The router's satisfaction question: five stars under it; a star sends its number as the
  // visitor's message (the router takes "1".."5" after a survey as the score). Once.
  function stars(li) {
    var row = el("div", { "class": "omni-stars", role: "group", "aria-label": T.stars.replace("{n}", "1-5") });
    for (var n = 1; n <= 5; n++) {
      (function (n) {
        var b = el("button", { type: "button", "class": "omni-star", "data-score": String(n), "aria-label": T.stars.replace("{n}", String(n)) }, "\u2605");
        b.addEventListener("click", function () {
          Array.prototype.forEach.call(row.querySelectorAll("button"), function (x, i) {
            x.disabled = true;
            if (i < n) x.classList.add("omni-star-on");
          });
          send(String(n));
          system(T.thanks);
        });
        row.appendChild(b);
      })(n);
    }
    li.appendChild(row);
  }
  function setNotice(text) { notice.textContent = text || ""; }
  // The router's estimate, in whole minutes ("about"); 0 means an agent is free now. Nothing
  // at all when the router cannot tell (no number is better than a made-up one).
  function showWait(secs) {
    if (typeof secs !== "number" || secs < 0) { waitLine.textContent = ""; return; }
    waitLine.textContent = secs === 0 ? T.waitSoon : T.wait.replace("{n}", String(Math.max(1, Math.round(secs / 60))));
  }

  // ---- open / close, keyboard ---------------------------------------------------------
  function openPanel() {
    state.open = true;
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    launcher.setAttribute("aria-label", T.close);
    input.focus();
    connectSoon(0);
    markRead();
  }
  function closePanel() {
    state.open = false;
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    launcher.setAttribute("aria-label", T.open);
    launcher.focus();
  }
  launcher.addEventListener("click", function () { state.open ? closePanel() : openPanel(); });
  closeBtn.addEventListener("click", closePanel);
  endBtn.addEventListener("click", leave);
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") { e.preventDefault(); closePanel(); } });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  });
  form.addEventListener("submit", function (e) { e.preventDefault(); submit(); });

  // ---- typing, both ways ------------------------------------------------------------------
  // The visitor's: "on" when they type (again every 3 s while they keep typing), "off" after
  // 4 s without a key or when they send. The agent's: shown until "off", or 8 s without news.
  var typing = { on: false, sent: 0, idle: null, shown: null };
  function sendTyping(on) {
    if (!state.ws || state.ws.readyState !== 1) return;
    state.ws.send(JSON.stringify({ type: "typing", on: on }));
    typing.on = on;
    typing.sent = Date.now();
  }
  input.addEventListener("input", function () {
    if (!input.value.trim()) { if (typing.on) sendTyping(false); return; }
    if (!typing.on || Date.now() - typing.sent > 3000) sendTyping(true);
    clearTimeout(typing.idle);
    typing.idle = setTimeout(function () { if (typing.on) sendTyping(false); }, 4000);
  });
  function agentTyping(on) {
    clearTimeout(typing.shown);
    typingLine.textContent = on ? T.typing : "";
    if (on) typing.shown = setTimeout(function () { typingLine.textContent = ""; }, 8000);
  }

  // ---- sending ------------------------------------------------------------------------
  function newId() {
    return "c-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
  }
  function submit() {
    var text = input.value.trim();
    if (!text) return;
    input.value = "";
    send(text);
  }
  function send(text) {
    clearTimeout(typing.idle);
    if (typing.on) sendTyping(false);
    var id = newId();
    // A new message after leaving starts a new contact, which can be ended again.
    state.left = false;
    endBtn.disabled = state.leaving;
    var li = bubble("visitor", text, "");
    li.classList.add("omni-pending");
    li.setAttribute("aria-busy", "true");
    state.pending[id] = { text: text, li: li };
    state.outbox.push(id);
    flush();
  }
  function flush() {
    if (!state.ws || state.ws.readyState !== 1) { connectSoon(0); return; }
    state.outbox.forEach(function (id) {
      var p = state.pending[id];
      if (p) state.ws.send(JSON.stringify({ type: "message", client_id: id, text: p.text }));
    });
  }
  // ---- ending the chat ----------------------------------------------------------------
  // Tells the router the visitor left ("leave"); the server answers "left" once Kafka has it.
  function leave() {
    if (state.leaving) return;
    if (!state.ws || state.ws.readyState !== 1) { setNotice(T.leaveFailed); connectSoon(0); return; }
    state.leaving = true;
    endBtn.disabled = true;
    state.ws.send('{"type":"leave"}');
  }
  function leaveDone(ok) {
    state.leaving = false;
    state.left = ok;
    endBtn.disabled = ok;
    if (ok) { showWait(null); setNotice(""); system(T.left); } else { setNotice(T.leaveFailed); }
  }
  function markRead() {
    if (state.open && state.cursor && state.ws && state.ws.readyState === 1) {
      state.ws.send(JSON.stringify({ type: "read", cursor: state.cursor }));
    }
  }

  // ---- session and socket -------------------------------------------------------------
  function session() {
    var body = { language: lang };
    if (ds.userId && ds.userHash) { body.user_id = ds.userId; body.user_hash = ds.userHash; }
    else if (state.token) { body.token = state.token; }
    return fetch(base + "/v1/livechat/" + encodeURIComponent(tenant) + "/" + encodeURIComponent(widget) + "/session", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), credentials: "omit"
    }).then(function (r) {
      // A revoked (or otherwise refused) previous token: forget it and start afresh.
      if (r.status === 401 && body.token) { forgetToken(); return session(); }
      if (!r.ok) throw new Error("session " + r.status);
      return r.json().then(adopt);
    });
  }
  function forgetToken() {
    state.token = null; state.exp = 0;
    saved = { token: null, exp: 0, visitor: saved.visitor, cursor: state.cursor };
    store.set(saved);
  }
  function adopt(s) {
    if (s.visitor_id !== saved.visitor) state.cursor = null;
    state.token = s.token; state.exp = s.expires_at; state.wsPath = s.ws_path;
    saved = { token: s.token, exp: s.expires_at, visitor: s.visitor_id, cursor: state.cursor };
    store.set(saved);
    if (s.open === false) setNotice(T.afterHours);
  }
  // "unavailable": the server could not store a message in time; it asks for the same
  // client_id again. Resend the outbox after 1 s, doubling up to 30 s, until acknowledged.
  function resendSoon() {
    if (state.resend) return;
    var delay = Math.min(30000, 1000 * Math.pow(2, state.resends));
    state.resends++;
    state.resend = setTimeout(function () { state.resend = null; flush(); }, delay);
  }
  function connectSoon(delay) {
    if (state.ws || state.timer) return;
    state.timer = setTimeout(connect, delay);
  }
  function backoff() {
    // Exponential backoff with full jitter, 0.5 s … 30 s.
    var cap = Math.min(30000, 500 * Math.pow(2, state.attempts));
    state.attempts++;
    return Math.floor(cap / 2 + Math.random() * cap / 2);
  }
  function connect() {
    state.timer = null;
    if (!navigator.onLine) { setNotice(T.offline); return; }
    setNotice(state.attempts ? T.reconnecting : T.connecting);
    var fresh = !state.token || !state.wsPath || state.exp - Date.now() / 1000 < 60 || state.attempts >= 2;
    (fresh ? session() : Promise.resolve()).then(open, function () {
      setNotice(T.reconnecting);
      state.timer = setTimeout(connect, backoff());
    });
  }
  function open() {
    var url = base.replace(/^http/, "ws") + state.wsPath +
      (state.cursor ? "?after=" + encodeURIComponent(state.cursor) : "");
    // The token as a subprotocol: browsers send no other header, and URLs end up in logs.
    // The server answers "omni.v1", never the token.
    var ws = new WebSocket(url, ["omni.v1", "omni.token." + state.token]);
    state.ws = ws;
    ws.onopen = function () {
      state.attempts = 0;
      setNotice("");
      flush();
      clearInterval(state.ping);
      state.ping = setInterval(function () { if (ws.readyState === 1) ws.send('{"type":"ping"}'); }, 25000);
    };
    ws.onmessage = function (e) {
      var f;
      try { f = JSON.parse(e.data); } catch (err) { return; }
      onFrame(f);
    };
    ws.onclose = function () {
      clearInterval(state.ping);
      state.ws = null;
      // A leave not confirmed on this socket may be tried again on the next one.
      if (state.leaving) { state.leaving = false; endBtn.disabled = state.left; }
      state.timer = setTimeout(connect, backoff());
    };
  }
  function onFrame(f) {
    if (f.type === "status") {
      setNotice(f.open === false ? T.afterHours : "");
    } else if (f.type === "message") {
      state.cursor = f.cursor;
      saved.cursor = f.cursor;
      store.set(saved);
      if (state.seen[f.id]) return;
      state.seen[f.id] = true;
      var p = f.client_id && state.pending[f.client_id];
      if (p) {
        p.li.classList.remove("omni-pending");
        p.li.removeAttribute("aria-busy");
        p.li.setAttribute("data-id", f.id);
        delete state.pending[f.client_id];
        state.outbox = state.outbox.filter(function (id) { return id !== f.client_id; });
      } else {
        var shown = bubble(f.from === "agent" ? "agent" : "visitor", f.text || "", f.id);
        if (f.survey) stars(shown);
      }
      if (f.from === "agent") { agentTyping(false); showWait(null); markRead(); }
    } else if (f.type === "typing") {
      if (f.from === "agent") agentTyping(!!f.on);
    } else if (f.type === "ack") {
      state.resends = 0;
      state.outbox = state.outbox.filter(function (id) { return id !== f.client_id; });
      if (!state.outbox.length && notice.textContent === T.failed) setNotice("");
      var q = state.pending[f.client_id];
      if (q) q.li.setAttribute("data-event-id", f.event_id);
    } else if (f.type === "queued") {
      showWait(f.estimated_wait_secs);
    } else if (f.type === "assigned" || f.type === "ended") {
      showWait(null);
    } else if (f.type === "left") {
      leaveDone(true);
    } else if (f.type === "error") {
      if (f.code === "leave_failed" || (f.code === "rate_limited" && !f.client_id && state.leaving)) leaveDone(false);
      else if (f.code === "rate_limited") setNotice(T.rateLimited);
      else if (f.code === "unavailable") { setNotice(T.failed); resendSoon(); }
      // The server closes the socket next; the reconnect asks for a new session.
      else if (f.code === "token_revoked") forgetToken();
    }
  }
  window.addEventListener("online", function () { setNotice(""); connectSoon(0); });
  window.addEventListener("offline", function () { setNotice(T.offline); });

  window.OmniChat = {
    open: openPanel, close: closePanel,
    state: function () {
      return {
        connected: !!(state.ws && state.ws.readyState === 1), cursor: state.cursor, lang: lang,
        wait: waitLine.textContent, left: state.left
      };
    }
  };
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
  // Reconnect at load when this browser already has a conversation, so replies show up.
  if (saved.token || ds.open === "true") { if (ds.open === "true") openPanel(); else connectSoon(0); }
})();
