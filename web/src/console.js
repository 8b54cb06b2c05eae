// The Sightline console page: joins a room with Sightline (the console server creates the room,
// dispatches the agent and mints the token), shares the screen and the microphone, sends chat
// on `lk.chat`, shows answers as they stream on `lk.transcription`, and the JSON messages the
// worker publishes: `sightline.assist` (live assist), `sightline.screen` (errors seen on screen),
// `sightline.handoff` (handed to a person), `sightline.cost` (the session's running cost) and
// `sightline.chat.received` (a chat message reached the worker, or was answered).
// Everything from the room is shown as text (textContent), never as HTML: screen and document
// text is data.
import { Room, RoomEvent, Track } from 'livekit-client';

const $ = (id) => document.getElementById(id);
const decoder = new TextDecoder();
let room = null;

// what the panels say before a session has sent anything (restored at each Start session)
const ASSIST_HEARD = $('assist-heard').textContent;
const COST = $('cost').textContent;
const CHAT_PLACEHOLDER = $('chat-input').placeholder;

// the current session's state (reset at each Start session)
let sessionRoom = '';      // its room's name, for the status line
let agentSeen = false;     // an agent has been in the room: once none is left, it has left
let outgoing = [];         // chat messages Sightline has not answered yet, in the order typed
let reconnecting = false;  // the connection to LiveKit lost; livekit-client is reconnecting
let rejoinUntil = 0;       // after a reconnection, until when the agent may still rejoin (ms)
let rejoinTimer = null;
let bubbles = new Map();   // lk.segment_id -> the bubble showing that segment
let thinking = null;       // "Sightline is thinking…", while shown: the conversation's last item
const notes = { screen: '', mic: '' };  // why the screen or the microphone is not shared

function setStatus(text, state) {
  $('status').textContent = text;
  $('status').dataset.state = state;
}

// the screen's and the microphone's notes, both shown: each can fail on its own
function note(kind, text) {
  notes[kind] = text;
  $('media-note').textContent = [notes.screen, notes.mic].filter(Boolean).join(' ');
}

function addMessage(role, text) {
  const item = document.createElement('li');
  item.className = role;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  item.append(body);
  $('messages').append(item);
  if (thinking) $('messages').append(thinking);  // it stays where the answer will appear
  item.scrollIntoView({ block: 'end' });
  return item;
}

// While Sightline works out an answer (looks things up, asks the models, runs a tool), the
// conversation says so where the answer will appear: livekit-agents publishes its session's state
// as the agent's participant attribute `lk.agent.state` (what LiveKit's own front-end components
// read), `thinking` until the answer starts. The indicator goes when the state changes, when an
// answer starts streaming (a text-only session's state may stay `thinking` until it ends), and
// when the agent leaves or the session ends.
const AGENT_STATE = 'lk.agent.state';

function showThinking(on) {
  if (on && !thinking) {
    thinking = addMessage('thinking', 'Sightline is thinking…');
  } else if (!on && thinking) {
    thinking.remove();
    thinking = null;
  }
}

function onAttributes(changed, participant) {
  if (participant.isAgent && AGENT_STATE in changed) {
    showThinking(changed[AGENT_STATE] === 'thinking');
  }
}

// an agent joining (again, after a reconnection) brings its state with it, not as a change
function onJoined(participant) {
  showAgent();  // first: before it is active, the agent that left is still gone
  if (participant.isAgent) showThinking(participant.attributes[AGENT_STATE] === 'thinking');
}

// a small label after a message's text: queued, not sent, not confirmed, not answered, cut off
function label(item, className, text) {
  item.querySelector('.label')?.remove();
  if (!text) return;
  const tag = document.createElement('span');
  tag.className = `label ${className}`;
  tag.textContent = text;
  item.append(tag);
}

function enable(ids, on) {
  for (const id of ids) $(id).disabled = !on;
}

// One bubble per transcript segment (`lk.segment_id`): the agent's reply is one stream of
// deltas, but livekit-agents sends the user's transcribed speech as one whole-text stream per
// interim guess and the final text twice, each with the segment's id. So each stream writes its
// own text from the start into its segment's bubble, replacing what an earlier stream of the
// segment showed. Who spoke is the stream's sender: livekit-agents sends the user's transcript
// in the user's name, and stamps `lk.transcribed_track_id` on both (the agent's own transcript
// carries its speech track), so that attribute says nothing about who spoke.
async function onTranscription(reader, participantInfo, current) {
  const fromUser = participantInfo.identity === current.localParticipant.identity;
  // an answer is shown only from an agent: another participant's would pass for Sightline's
  if (!fromUser && !current.remoteParticipants.get(participantInfo.identity)?.isAgent) return;
  const segment = reader.info.attributes?.['lk.segment_id'] || reader.info.id;
  if (!fromUser) showThinking(false);  // the answer is starting
  let item = bubbles.get(segment);
  if (!item) {
    item = addMessage(fromUser ? 'user voice' : 'agent', '');
    bubbles.set(segment, item);
  }
  item.dataset.stream = reader.info.id;
  item.classList.add('streaming');
  item.classList.remove('done', 'interrupted');
  label(item, '', '');
  const body = item.querySelector('.text');
  const mine = () => item.dataset.stream === reader.info.id;  // no newer stream of the segment
  let text = '';
  try {
    for await (const delta of reader) {
      text += delta;
      if (!mine()) continue;
      body.textContent = text;
      item.scrollIntoView({ block: 'end' });
    }
    if (mine()) {
      item.classList.remove('streaming');
      item.classList.add('done');
    }
  } catch {
    // the stream ended before its close: the sender left, or we did (Leave, a lost connection)
    if (mine()) {
      item.classList.remove('streaming');
      item.classList.add('interrupted');
      label(item, 'cut', fromUser ? ' — cut off' : ' — cut off: Sightline did not finish this answer');
    }
  }
}

function showAssist(message) {
  $('assist-heard').textContent = `${message.final ? 'Heard' : 'Hearing'} (${message.input}): “${message.text}”`;
  $('assist-heard').className = '';
  $('assist-intent').textContent = message.intent
    ? `Intent: ${message.intent.name} (${message.intent.score.toFixed(2)})`
    : 'Intent: none detected';
  const list = $('suggestions');
  list.replaceChildren();
  for (const suggestion of message.suggestions) {
    const item = document.createElement('li');
    item.className = 'suggestion';
    const title = document.createElement('strong');
    title.textContent = suggestion.title;
    const where = document.createElement('span');
    where.className = 'score';
    const page = suggestion.page ? `, page ${suggestion.page}` : '';
    where.textContent = ` ${suggestion.source}${page} · ${suggestion.score.toFixed(4)}`;
    item.append(title, where);
    list.append(item);
  }
  if (!message.suggestions.length) {
    const item = document.createElement('li');
    item.className = 'muted';
    item.textContent = 'No matching knowledge article.';
    list.append(item);
  }
}

function showScreenEvent(message) {
  const item = document.createElement('li');
  item.textContent = `t=${Number(message.t).toFixed(0)}s ${message.headline}`;
  $('screen-events-empty').hidden = true;
  $('screen-events').prepend(item);
}

function showHandoff(message) {
  $('handoff').hidden = false;
  $('handoff').textContent = `Handed over to a person: ${message.reason}`;
}

function showCost(message) {
  $('cost').textContent = `$${message.total_usd.toFixed(6)} · ${message.model_calls} calls`;
}

const TOPICS = {
  'sightline.chat.received': confirmed,
  'sightline.assist': showAssist,
  'sightline.screen': showScreenEvent,
  'sightline.handoff': showHandoff,
  'sightline.cost': showCost,
};

// Only an agent (the worker) publishes these: the same topic from anyone else in the room is a
// forgery (a receipt that would settle a question nobody answered, a made-up handoff or cost).
function onData(payload, participant, _kind, topic) {
  const show = TOPICS[topic];
  if (!show || !participant?.isAgent) return;
  let message;
  try {
    message = JSON.parse(decoder.decode(payload));
  } catch {
    return;  // not JSON: not one of Sightline's messages
  }
  show(message, participant);
}

// The share and microphone buttons say what the room has, whoever changed it: the page's
// buttons, or the browser's own "Stop sharing" bar (which ends the capture: LiveKit unpublishes
// the share).
function showMedia() {
  const local = room?.localParticipant;
  $('share').textContent = local?.isScreenShareEnabled ? 'Stop sharing' : 'Share screen';
  $('mic').textContent = local?.isMicrophoneEnabled ? 'Microphone off' : 'Microphone on';
}

function onLocalPublished(publication) {
  if (publication.source === Track.Source.ScreenShare) publication.track?.attach($('preview'));
  showMedia();
}

function onLocalUnpublished(publication) {
  if (publication.source === Track.Source.ScreenShare) {
    publication.track?.detach($('preview'));
    $('preview').srcObject = null;
  }
  showMedia();
}

// Each acts on the room it is given (its session's), never on whichever room is current once
// it has waited: the user may have left, or started another session, while the screen picker
// was open. What it found out is shown only while its session is still the current one.
async function shareScreen(target) {
  let problem = '';
  try {
    await target.localParticipant.setScreenShareEnabled(true, { audio: false });
  } catch (error) {
    problem = `Screen not shared (${error.name}): Sightline answers without seeing it.`;
  }
  if (room !== target) return;
  note('screen', problem);
  showMedia();
}

async function toggleShare() {
  const target = room;
  if (!target) return;
  if (target.localParticipant.isScreenShareEnabled) {
    await target.localParticipant.setScreenShareEnabled(false);
    showMedia();
  } else {
    await shareScreen(target);
  }
}

async function toggleMic(target) {
  const on = !target.localParticipant.isMicrophoneEnabled;
  let problem = '';
  try {
    await target.localParticipant.setMicrophoneEnabled(on);
  } catch (error) {
    problem = `Microphone unavailable (${error.name}): chat still works.`;
  }
  if (room !== target) return;
  note('mic', problem);
  showMedia();
}

// spoken answers: an <audio> element per subscribed track, removed with it (LiveKit detaches
// the track from its elements before it says the track is unsubscribed, but leaves them in the
// page)
const answerAudio = new Map();  // remote track -> its <audio> element

function playAudio(track) {
  if (track.kind !== Track.Kind.Audio) return;
  const element = track.attach();
  element.classList.add('answer');
  answerAudio.set(track, element);
  document.body.append(element);
}

function removeAudio(track) {
  const tracks = track ? [track] : [...answerAudio.keys()];
  for (const each of tracks) {
    answerAudio.get(each)?.remove();
    answerAudio.delete(each);
  }
}

// An agent that can be sent to: active, ready for data messages (LiveKit does not keep what
// is sent to a participant still joining: a question flushed to the agent as it joined again
// after a reconnection was lost in four runs of six here). livekit-client emits
// ParticipantActive before its `isActive` turns true, so the participants it named are kept.
const activeParticipants = new WeakSet();
function agentInRoom() {
  return [...room.remoteParticipants.values()].some(
    (p) => p.isAgent && (p.isActive || activeParticipants.has(p)));
}

function onActive(participant) {
  activeParticipants.add(participant);
  showAgent();
}

// Each chat message stays in `outgoing` until the worker confirms it has its text
// (`sightline.chat.received` naming the message's id, agent/chat_inbox.py). LiveKit keeps nothing
// for a participant whose connection is not up yet: after a LiveKit restart, a question sent as
// the agent rejoined was lost though sendText had resolved (about one run in eight of
// tests/test_console_browser.py's reconnection test). So one not confirmed in time is sent
// again, under the same id, which the worker answers once; after the last wait it is marked not
// confirmed. Each wait doubles: a worker under load confirms late, and each copy is more load.
// A confirmed message waits, unsent, for the worker to say its reply is done (`answered`): the
// agent that read it may leave first (a worker that died), and the agent that joins in its place
// is sent it. `receivedBy` is the sid of the agent's connection that confirmed it: a worker
// that reconnects after a LiveKit restart has a new one, and is sent it again (its receipt may
// have been lost with the server; the worker confirms a copy, answered if it is, and answers
// it once).
const MESSAGE_ID = 'sightline.message';  // the text stream's attribute holding the message's id
const CONFIRM_MS = [3000, 6000, 12000, 24000];  // after each send, how long to wait for it
const pageId = Math.random().toString(36).slice(2, 10);
let messageCount = 0;
let resendTimer = null;

// Sends what has not gone out yet, and again what waited out its confirmation, while Sightline
// can be sent to; then waits for the next confirmation due.
function deliver() {
  clearTimeout(resendTimer);
  if (!room || reconnecting || !agentInRoom()) return;
  const now = Date.now();
  let next = Infinity;
  for (const message of [...outgoing]) {
    if (message.sending) continue;
    if (message.receivedBy) {
      const readerHere = [...room.remoteParticipants.values()].some(
        (p) => p.sid === message.receivedBy);
      if (readerHere) continue;  // its answer is coming
      Object.assign(message, { receivedBy: '', sends: 0 });  // read by an agent that left
    }
    const due = message.sends ? message.sentAt + CONFIRM_MS[message.sends - 1] : now;
    if (due > now) {
      next = Math.min(next, due);
    } else if (message.sends === CONFIRM_MS.length) {
      settle(message);
      message.item.classList.add('unsent');
      label(message.item, 'unsent', ' — not confirmed: Sightline may not have it; ask again');
    } else {
      sendInOrder(message);
    }
  }
  if (next < Infinity) resendTimer = setTimeout(deliver, next - now);
}

// no longer waited for: answered, given up, or not sent
function settle(message) {
  outgoing = outgoing.filter((each) => each !== message);
}

// still to be sent or sent again: in `outgoing`, and not read by an agent
function unconfirmed(message) {
  return outgoing.includes(message) && !message.receivedBy;
}

function confirmed(receipt, agent) {
  const message = outgoing.find((each) => each.id === receipt.message);
  if (!message) return;  // answered already, or given up and labelled
  if (receipt.answered) {
    settle(message);
  } else {
    message.receivedBy = agent?.sid ?? '';
  }
  message.item.classList.remove('queued', 'unsent');
  label(message.item, '', '');
}

// the chat's messages go out one after another, in the order they were typed
let outbox = Promise.resolve();
function sendInOrder(message) {
  const target = room;
  message.sending = true;
  outbox = outbox.then(() => sendChat(target, message));
}

async function sendChat(target, message) {
  // the session ended meanwhile (ended() labelled the message), or a copy was confirmed
  if (room !== target || !unconfirmed(message)) return;
  try {
    await target.localParticipant.sendText(message.text,
      { topic: 'lk.chat', attributes: { [MESSAGE_ID]: message.id } });
    message.sends += 1;
    message.sentAt = Date.now();
    message.sending = false;
    if (!unconfirmed(message)) return;  // confirmed while sendText was finishing
    message.item.classList.remove('queued', 'unsent');
    label(message.item, '', message.sends > 1 ? ' — sent again: not confirmed yet' : '');
  } catch (error) {
    if (!unconfirmed(message)) return;  // a copy of it was confirmed meanwhile
    settle(message);
    message.item.classList.remove('queued');
    message.item.classList.add('unsent');
    label(message.item, 'unsent', ` — not sent (${error.message})`);
  }
  if (room === target) deliver();
}

// After a reconnection (a LiveKit server that restarted), the agent reconnects on its own and
// may come back some seconds after the page did: until then it has not left.
const AGENT_REJOIN_MS = 30000;

// Whether Sightline is in the room, in the status line and the chat box. Before it joins, what
// is typed waits in the page (the worker reads the chat once it has joined) and goes out when
// it arrives; once it has left, the chat is closed (nobody would answer) until an agent joins
// again (a replacement for a worker that died: README, Running against LiveKit). While the
// connection to LiveKit is lost, and after it is back until the agent is too, what is typed
// waits the same way.
function showAgent() {
  if (!room) return;
  if (reconnecting) {
    setStatus(`Connection to ${sessionRoom} lost; reconnecting…`, 'busy');
    $('chat-input').placeholder = 'Ask now: sent once the connection is back…';
  } else if (agentInRoom()) {
    agentSeen = true;
    setStatus(`Connected to ${sessionRoom}; Sightline joined`, 'connected');
    enable(['chat-input', 'send'], true);
    $('chat-input').placeholder = CHAT_PLACEHOLDER;
    deliver();
  } else if (agentSeen && Date.now() < rejoinUntil) {
    setStatus(`Reconnected to ${sessionRoom}; waiting for Sightline to reconnect…`, 'connected');
    enable(['chat-input', 'send'], true);
    $('chat-input').placeholder = 'Ask now: sent when Sightline is back…';
  } else if (agentSeen) {
    setStatus(`Connected to ${sessionRoom}; Sightline left the session: Leave, then Start session `
      + 'to ask again', 'left');
    enable(['chat-input', 'send'], false);
    $('chat-input').placeholder = 'Sightline left: nobody would answer';
    showThinking(false);
    // sent, not answered: an agent joining again (a replacement) is sent it, and answers it
    for (const { item, receivedBy } of outgoing.filter((message) => message.sends)) {
      item.classList.add('unsent');
      label(item, 'unsent', ` — not ${receivedBy ? 'answered' : 'confirmed'}: Sightline left`);
    }
  } else {
    setStatus(`Connected to ${sessionRoom}; waiting for Sightline…`, 'connected');
    enable(['chat-input', 'send'], true);
    $('chat-input').placeholder = 'Ask now: sent when Sightline joins…';
  }
}

// Start session shows only the new session: the panels the last one filled are emptied.
function resetPanels() {
  $('cost').textContent = COST;
  $('handoff').hidden = true;
  $('handoff').textContent = '';
  $('assist-heard').textContent = ASSIST_HEARD;
  $('assist-heard').className = 'muted';
  $('assist-intent').textContent = '';
  $('suggestions').replaceChildren();
  $('screen-events').replaceChildren();
  $('screen-events-empty').hidden = false;
  note('screen', '');
  note('mic', '');
  $('preview').srcObject = null;
  removeAudio(null);
  bubbles = new Map();
  showThinking(false);
  outgoing = [];
  clearTimeout(resendTimer);
  agentSeen = false;
  reconnecting = false;
  rejoinUntil = 0;
  clearTimeout(rejoinTimer);
}

function onReconnecting() {
  reconnecting = true;
  showThinking(false);  // the agent's state is unknown until it is back
  showAgent();
}

function onReconnected() {
  reconnecting = false;
  rejoinUntil = Date.now() + AGENT_REJOIN_MS;
  clearTimeout(rejoinTimer);
  rejoinTimer = setTimeout(showAgent, AGENT_REJOIN_MS);  // not back by then: it has left
  showAgent();
}

function ended() {
  const lost = reconnecting;
  reconnecting = false;
  clearTimeout(rejoinTimer);
  setStatus(lost ? 'Disconnected: the connection to LiveKit could not be restored; Start session '
    + 'to try again' : 'Disconnected', lost ? 'error' : 'idle');
  enable(['share', 'mic', 'leave', 'chat-input', 'send'], false);
  enable(['start'], true);
  $('chat-input').placeholder = CHAT_PLACEHOLDER;
  $('preview').srcObject = null;
  removeAudio(null);
  showThinking(false);
  clearTimeout(resendTimer);
  // a message Sightline read is not labelled: its answer, if cut off, says so
  for (const { item, sends } of outgoing.filter((message) => !message.receivedBy)) {
    item.classList.remove('queued');
    item.classList.add('unsent');
    const what = sends ? 'not confirmed' : 'not sent';
    label(item, 'unsent', lost ? ` — ${what}: the connection was lost`
      : ` — ${what}: the session ended before Sightline ${sends ? 'confirmed it' : 'joined'}`);
  }
  outgoing = [];
  room = null;
  showMedia();
}

// The browser's user id, kept across sessions and reloads, so that Sightline remembers this
// user (their conversation, facts, screen timeline) as it does any user of the same identity;
// none where the browser keeps nothing (the server then makes one for the session).
const USER_KEY = 'sightline.console.user';
function userId() {
  try {
    let id = localStorage.getItem(USER_KEY);
    if (!/^[0-9a-f]{12}$/.test(id ?? '')) {  // none yet, or not one this page made
      id = [...crypto.getRandomValues(new Uint8Array(6))]
        .map((byte) => byte.toString(16).padStart(2, '0')).join('');
      localStorage.setItem(USER_KEY, id);
    }
    return id;
  } catch {
    return null;  // storage refused (a privacy setting, an opaque origin)
  }
}

// A new session from the console server, or an Error whose message the status line shows as
// is. Every way of failing is caught here, so the page never stays at "Starting…" with its
// button disabled: the server gone or unreachable (fetch rejects), and a body that is not the
// server's JSON (a proxy's or another program's page on the port, or a cut-off answer).
async function requestSession() {
  let response;
  const user = userId();
  try {
    response = await fetch('/api/session', {
      method: 'POST',
      headers: { 'X-Sightline-Console': '1', 'Content-Type': 'application/json' },
      body: JSON.stringify(user ? { user } : {}),
    });
  } catch {
    throw new Error('Could not reach the console server: is `sightline console` still running?');
  }
  let session = null;
  try {
    session = await response.json();
  } catch {
    // not JSON: whatever answered is not the console server (or the answer was cut off)
  }
  if (!response.ok || session === null || typeof session !== 'object') {
    const status = [response.status, response.statusText].filter(Boolean).join(' ');
    throw new Error(session?.error || `The console server answered ${status} without a session`);
  }
  return session;
}

async function start() {
  enable(['start'], false);
  setStatus('Starting…', 'busy');
  let session;
  try {
    session = await requestSession();
  } catch (error) {
    setStatus(error.message, 'error');
    enable(['start'], true);
    return;
  }
  resetPanels();
  $('who').textContent = `You are ${session.identity}`;
  if ($('messages').children.length) addMessage('divider', `New session: ${session.room}`);
  sessionRoom = session.room;
  const current = room = new Room();
  // an event of a session already left (its room object) changes nothing on the page
  const live = (handler) => (...args) => { if (room === current) handler(...args); };
  current.registerTextStreamHandler('lk.transcription', live((reader, participantInfo) => {
    onTranscription(reader, participantInfo, current);
  }));
  current.on(RoomEvent.DataReceived, live(onData));
  current.on(RoomEvent.ParticipantConnected, live(onJoined));
  current.on(RoomEvent.ParticipantActive, live(onActive));
  current.on(RoomEvent.ParticipantDisconnected, live(showAgent));
  current.on(RoomEvent.ParticipantAttributesChanged, live(onAttributes));
  current.on(RoomEvent.TrackSubscribed, live(playAudio));
  current.on(RoomEvent.TrackUnsubscribed, removeAudio);
  current.on(RoomEvent.LocalTrackPublished, live(onLocalPublished));
  current.on(RoomEvent.LocalTrackUnpublished, live(onLocalUnpublished));
  current.on(RoomEvent.TrackMuted, live(showMedia));
  current.on(RoomEvent.TrackUnmuted, live(showMedia));
  current.on(RoomEvent.Disconnected, live(ended));
  current.on(RoomEvent.Reconnecting, live(onReconnecting));
  current.on(RoomEvent.SignalReconnecting, live(onReconnecting));
  current.on(RoomEvent.Reconnected, live(onReconnected));
  // After each wait below, this session may be over: left (Leave, or the server ended the room:
  // ended() has emptied `room`), or even followed by a newer one. Then it does nothing more: it
  // must not touch the page, nor the newer session's room (its microphone).
  try {
    await current.connect(session.url, session.token);
  } catch (error) {
    if (room !== current && room !== null) return;  // a newer session owns the page
    // (a failed connect ends the room first: ended() ran, and this says why)
    room = null;
    setStatus(`Could not join ${session.url}: ${error.message}`, 'error');
    enable(['start'], true);
    return;
  }
  if (room !== current) return;
  enable(['share', 'mic', 'leave'], true);
  showAgent();
  await shareScreen(current);  // the screen picker stays open as long as the user likes
  if (room !== current) return;
  await toggleMic(current);
}

// live assist while typing: the unsent text, at most every DRAFT_MS, on `sightline.draft`
const DRAFT_MS = 400;
let draftTimer = null;
let lastDraft = '';
function drafting() {
  clearTimeout(draftTimer);
  draftTimer = setTimeout(async () => {
    const text = $('chat-input').value.trim();
    if (!room || text.length < 3 || text === lastDraft) return;
    lastDraft = text;
    try {
      await room.localParticipant.publishData(new TextEncoder().encode(text),
        { reliable: true, topic: 'sightline.draft' });
    } catch {
      // the room went away meanwhile: a draft is only a hint
    }
  }, DRAFT_MS);
}

function send(event) {
  event.preventDefault();
  const text = $('chat-input').value.trim();
  if (!text || !room) return;
  $('chat-input').value = '';
  $('chat-input').focus();  // Send clicked: the next question is typed straight away
  clearTimeout(draftTimer);
  lastDraft = '';
  const item = addMessage('user', text);
  outgoing.push({ id: `${pageId}-${++messageCount}`, text, item, sends: 0, sentAt: 0,
    sending: false });
  if (agentInRoom() && !reconnecting) {
    deliver();
  } else {
    item.classList.add('queued');
    label(item, 'queued', reconnecting ? ' — queued: sent once the connection is back'
      : ` — queued: sent when Sightline ${agentSeen ? 'is back' : 'joins'}`);
  }
}

$('start').addEventListener('click', start);
$('share').addEventListener('click', toggleShare);
$('mic').addEventListener('click', () => { if (room) toggleMic(room); });
$('leave').addEventListener('click', () => room?.disconnect());
$('chat').addEventListener('submit', send);
$('chat-input').addEventListener('input', drafting);
