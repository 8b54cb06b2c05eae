// The Sightline console page: joins a room with Sightline (the console server creates the room,
// dispatches the agent and mints the token), shares the screen and the microphone, sends chat
// on `lk.chat`, shows answers as they stream on `lk.transcription`, and the JSON messages the
// worker publishes: `sightline.assist` (live assist), `sightline.screen` (errors seen on screen),
// `sightline.handoff` (handed to a person) and `sightline.cost` (the session's running cost).
// Everything from the room is shown as text (textContent), never as HTML: screen and document
// text is data.
import { Room, RoomEvent, Track } from 'livekit-client';

const $ = (id) => document.getElementById(id);
const decoder = new TextDecoder();
let room = null;

function setStatus(text, state) {
  $('status').textContent = text;
  $('status').dataset.state = state;
}

function note(text) {
  $('media-note').textContent = text;
}

function addMessage(role, text) {
  const item = document.createElement('li');
  item.className = role;
  item.textContent = text;
  $('messages').append(item);
  item.scrollIntoView({ block: 'end' });
  return item;
}

function enable(ids, on) {
  for (const id of ids) $(id).disabled = !on;
}

async function onTranscription(reader, participantInfo) {
  // the agent also sends the user's own speech, transcribed, tagged with the user's track
  const transcribed = reader.info.attributes?.['lk.transcribed_track_id'];
  const fromUser = Boolean(transcribed) || participantInfo.identity === room?.localParticipant.identity;
  const item = addMessage(fromUser ? 'user voice' : 'agent streaming', '');
  try {
    for await (const delta of reader) {
      item.textContent += delta;
      item.scrollIntoView({ block: 'end' });
    }
  } finally {
    item.classList.remove('streaming');
    item.classList.add('done');
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
  'sightline.assist': showAssist,
  'sightline.screen': showScreenEvent,
  'sightline.handoff': showHandoff,
  'sightline.cost': showCost,
};

function onData(payload, _participant, _kind, topic) {
  const show = TOPICS[topic];
  if (!show) return;
  let message;
  try {
    message = JSON.parse(decoder.decode(payload));
  } catch {
    return;  // not JSON: not one of Sightline's messages
  }
  show(message);
}

async function shareScreen() {
  try {
    const publication = await room.localParticipant.setScreenShareEnabled(true, { audio: false });
    publication?.track?.attach($('preview'));
    $('share').textContent = 'Stop sharing';
    note('');
  } catch (error) {
    note(`Screen not shared (${error.name}): Sightline answers without seeing it.`);
  }
}

async function toggleShare() {
  const sharing = room.localParticipant.isScreenShareEnabled;
  if (sharing) {
    await room.localParticipant.setScreenShareEnabled(false);
    $('share').textContent = 'Share screen';
  } else {
    await shareScreen();
  }
}

async function toggleMic() {
  const on = !room.localParticipant.isMicrophoneEnabled;
  try {
    await room.localParticipant.setMicrophoneEnabled(on);
    $('mic').textContent = on ? 'Microphone off' : 'Microphone on';
  } catch (error) {
    note(`Microphone unavailable (${error.name}): chat still works.`);
  }
}

// A new session from the console server, or an Error whose message the status line shows as
// is. Every way of failing is caught here, so the page never stays at "Starting…" with its
// button disabled: the server gone or unreachable (fetch rejects), and a body that is not the
// server's JSON (a proxy's or another program's page on the port, or a cut-off answer).
async function requestSession() {
  let response;
  try {
    response = await fetch('/api/session', { method: 'POST', headers: { 'X-Sightline-Console': '1' } });
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
  room = new Room();
  room.registerTextStreamHandler('lk.transcription', onTranscription);
  room.on(RoomEvent.DataReceived, onData);
  room.on(RoomEvent.ParticipantConnected, (participant) => {
    if (participant.isAgent) setStatus(`Connected to ${session.room}; Sightline joined`, 'connected');
  });
  room.on(RoomEvent.TrackSubscribed, (track) => {
    if (track.kind === Track.Kind.Audio) document.body.append(track.attach());  // spoken answers
  });
  room.on(RoomEvent.Disconnected, () => {
    setStatus('Disconnected', 'idle');
    enable(['share', 'mic', 'leave', 'chat-input', 'send'], false);
    enable(['start'], true);
  });
  try {
    await room.connect(session.url, session.token);
  } catch (error) {
    setStatus(`Could not join ${session.url}: ${error.message}`, 'error');
    enable(['start'], true);
    return;
  }
  const agentHere = [...room.remoteParticipants.values()].some((p) => p.isAgent);
  setStatus(`Connected to ${session.room}${agentHere ? '; Sightline joined' : '; waiting for Sightline…'}`,
    'connected');
  enable(['share', 'mic', 'leave', 'chat-input', 'send'], true);
  await shareScreen();
  await toggleMic();
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
    await room.localParticipant.publishData(new TextEncoder().encode(text),
      { reliable: true, topic: 'sightline.draft' });
  }, DRAFT_MS);
}

async function send(event) {
  event.preventDefault();
  const text = $('chat-input').value.trim();
  if (!text || !room) return;
  $('chat-input').value = '';
  clearTimeout(draftTimer);
  lastDraft = '';
  addMessage('user', text);
  await room.localParticipant.sendText(text, { topic: 'lk.chat' });
}

$('start').addEventListener('click', start);
$('share').addEventListener('click', toggleShare);
$('mic').addEventListener('click', toggleMic);
$('leave').addEventListener('click', () => room?.disconnect());
$('chat').addEventListener('submit', send);
$('chat-input').addEventListener('input', drafting);
