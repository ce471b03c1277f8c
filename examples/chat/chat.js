// fws chat: join a room (a token group of fws.filters.broadcast_messages_by_token),
// send, see the others' messages. No dependencies, no external resources.
//
// The server side: "token:ROOM" joins ROOM; anything else goes to the others in it.
// Messages are JSON {"name", "text"}; anything else (server replies) is shown as a
// system line. Received text is only ever set with textContent.
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

  function connect() {
    setStatus("connecting…", false);
    socket = new WebSocket(url);
    socket.onopen = function () {
      this.wasOpen = true;
      delay = 500;
      setStatus("connected", true);
      if (room !== null) socket.send("token:" + room);
    };
    socket.onmessage = function (event) {
      if (typeof event.data !== "string") return;
      let parsed = null;
      try { parsed = JSON.parse(event.data); } catch (e) { /* a server reply */ }
      if (parsed && typeof parsed.name === "string" && typeof parsed.text === "string") {
        line("other", parsed.name + ":", parsed.text);
        return;
      }
      if (event.data.startsWith("Successfully registered with broadcast group: ")) {
        line("system", null, "joined room " + event.data.slice(46));
        message.disabled = send.disabled = false;
        message.placeholder = "say something";
        message.focus();
        return;
      }
      line("system", null, event.data);
    };
    socket.onclose = function (event) {
      message.disabled = send.disabled = true;
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
    socket.send(JSON.stringify({ name: name, text: text }).replace(/token:/g, "token\\u003a"));
    line("mine", "you:", text);   // the server does not echo to the sender
    message.value = "";
  });

  connect();
})();
