// fws chat: join a room (a token group of fws.filters.broadcast_messages_by_token),
// send, see the others' messages. No dependencies, no external resources.
//
// The server side: "token:ROOM" joins ROOM; anything else goes to the others in it.
// Messages are JSON {"name", "text", "id"}; anything else (server replies) is shown as a
// system line. Received text is only ever set with textContent.
//
// With a server started with --history (docs/history.rst), the page asks for the fws.v1
// subprotocol: each room message then comes after a header line with its offset, and a
// page that lost its connection reconnects with ?resume= and shows every message it
// missed, or says that it could not. Without --history it works as before.
(function () {
  "use strict";

  const params = new URLSearchParams(location.search);
  const url = params.get("ws") ||
    (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
  const $ = (id) => document.getElementById(id);
  const log = $("log"), status = $("status"), message = $("message"), send = $("send");

  let socket = null;
  let room = null;     // the room joined (re-joined after a reconnect)
  let delay = 500;     // reconnect backoff, ms
  let headed = false;  // the server keeps history: messages come with headers (fws.v1)
  let seen = null;     // [epoch, offset] of the last message of the room, with history
  let missed = 0;      // messages replayed since the reconnect
  let plainOnly = false;    // the server refused fws.v1: it keeps no history
  const mine = new Set();   // ids of the messages this page sent (a replay has them too)

  function line(kind, who, text) {
    const item = document.createElement("li");
    item.className = kind;
    if (who !== null) {
      const name = document.createElement("span");
      name.className = "who";
      name.textContent = who;
      item.appendChild(name);
    }
    item.appendChild(document.createTextNode(who !== null ? " " + text : text));
    log.appendChild(item);
    log.scrollTop = log.scrollHeight;
  }

  function setStatus(text, open) {
    status.textContent = text;
    status.classList.toggle("open", open);
  }

  function ready() {
    message.disabled = send.disabled = false;
    message.placeholder = "say something";
    message.focus();
  }

  function connect() {
    setStatus("connecting…", false);
    let target = url;
    const resuming = headed && room !== null;
    if (resuming) {
      // Back to the room where we were: the server replays what we missed.
      const position = {};
      position[room] = seen || ["", 0];
      target += (url.includes("?") ? "&" : "?") + "resume=" + encodeURIComponent(JSON.stringify(position));
    }
    // Browsers fail a handshake that offers a subprotocol the server does not take: a
    // server without --history refuses the first try, and the page stops asking. Once it
    // has had history it keeps asking (it reloads to talk to a server that dropped it).
    const offer = headed || !plainOnly;
    socket = offer ? new WebSocket(target, "fws.v1") : new WebSocket(target);
    socket.onopen = function () {
      this.wasOpen = true;
      delay = 500;
      missed = 0;
      headed = socket.protocol === "fws.v1";
      setStatus("connected", true);
      if (room !== null && !(resuming && headed)) socket.send("token:" + room);
    };
    socket.onmessage = function (event) {
      if (typeof event.data !== "string") return;
      let data = event.data, counted = false;
      if (headed && data.startsWith('{"group"')) {
        const newline = data.indexOf("\n");
        let head = null;
        try { head = JSON.parse(newline < 0 ? data : data.slice(0, newline)); } catch (e) { /* not a header */ }
        if (head && head.group === room && newline < 0 && typeof head.recovered === "boolean") {
          seen = head.offset !== null ? [head.epoch, head.offset] : null;
          line("system", null, head.recovered
            ? "back in room " + room + " (" + missed + " missed message" + (missed === 1 ? "" : "s") + " shown)"
            : "back in room " + room + ": messages sent while you were away could not be recovered");
          ready();
          return;
        }
        if (head && newline >= 0) {
          if (head.group !== room) return;
          if (head.offset !== null) seen = [head.epoch, head.offset];
          missed += 1;
          counted = true;
          data = data.slice(newline + 1);
        }
      }
      let parsed = null;
      try { parsed = JSON.parse(data); } catch (e) { /* a server reply */ }
      if (parsed && typeof parsed.name === "string" && typeof parsed.text === "string") {
        if (typeof parsed.id === "string" && mine.has(parsed.id)) {  // ours, replayed
          if (counted) missed -= 1;
          return;
        }
        line("other", parsed.name + ":", parsed.text);
        return;
      }
      if (event.data.startsWith("Successfully registered with broadcast group: ")) {
        line("system", null, "joined room " + event.data.slice(46));
        ready();
        return;
      }
      line("system", null, data);
    };
    socket.onclose = function (event) {
      message.disabled = send.disabled = true;
      if (!this.wasOpen && offer && !headed && !plainOnly) {
        plainOnly = true;   // no fws.v1 here: connect again at once, as before history
        setTimeout(connect, 0);
        return;
      }
      // Said once in the log (the status line changes with every retry): why the
      // connection that was open went, e.g. 1001 for a server restarting.
      if (this.wasOpen) line("system", null, "connection closed (" + event.code + "), reconnecting");
      setStatus("reconnecting… (closed " + event.code + ")", false);
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }

  $("join-form").addEventListener("submit", function (event) {
    event.preventDefault();
    const wanted = $("room").value.trim();
    if (!wanted || /\s/.test(wanted)) return;
    if (wanted !== room) seen = null;
    room = wanted;
    if (socket && socket.readyState === WebSocket.OPEN) socket.send("token:" + room);
  });

  $("send-form").addEventListener("submit", function (event) {
    event.preventDefault();
    const text = message.value;
    if (!text.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
    const name = $("name").value.trim() || "anonymous";
    // "token:" anywhere in a message means "join" to the server filter: escape the
    // colon (still the same JSON text once parsed) so that chatting about tokens works.
    const id = Math.random().toString(36).slice(2) + Date.now().toString(36);
    mine.add(id);
    socket.send(JSON.stringify({ name: name, text: text, id: id }).replace(/token:/g, "token\\u003a"));
    line("mine", "you:", text);   // the server does not echo to the sender
    message.value = "";
  });

  connect();
})();
