//! Streams in the native dialects (Anthropic's typed events, Gemini's `alt=sse` responses), with the same fault
//! modes as OpenAI streams.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Call, Conn, Flow, Framing, Mode, stock_message};
use crate::mock_upstream::dialect::{Dialect, Stop};
use crate::mock_upstream::{anthropic, gemini};

const ANTHROPIC_FRAMING: Framing = Framing { malformed: anthropic::MALFORMED_EVENT, keep_alive: anthropic::PING_EVENT };
const GEMINI_FRAMING: Framing = Framing { malformed: gemini::MALFORMED_EVENT, keep_alive: gemini::KEEP_ALIVE_EVENT };

enum Events {
    Anthropic(anthropic::Events),
    Gemini(gemini::Events),
}

impl Events {
    fn framing(&self) -> Framing {
        match self {
            Events::Anthropic(_) => ANTHROPIC_FRAMING,
            Events::Gemini(_) => GEMINI_FRAMING,
        }
    }

    fn pieces(&self, text: &'static str) -> Vec<&'static str> {
        match self {
            Events::Anthropic(e) => e.pieces(text),
            Events::Gemini(e) => e.pieces(text),
        }
    }

    fn start(&mut self, ev: &mut Vec<u8>, pieces: usize) {
        if let Events::Anthropic(e) = self {
            e.start(ev, pieces);
        }
    }

    /// One piece; `last` (the number of pieces) when it is the last one of a stream that ends normally.
    fn piece(&self, ev: &mut Vec<u8>, piece: &str, last: Option<usize>) {
        match self {
            Events::Anthropic(e) => e.piece(ev, piece),
            Events::Gemini(e) => e.piece(ev, piece, last),
        }
    }

    fn finish(&self, ev: &mut Vec<u8>, pieces: usize, missing_done: bool) {
        match self {
            Events::Anthropic(e) => e.finish(ev, pieces, missing_done),
            Events::Gemini(e) => e.finish(ev, pieces, missing_done),
        }
    }

    fn error(&self, ev: &mut Vec<u8>, status: u16, message: &str) {
        match self {
            Events::Anthropic(e) => e.error(ev, status, message),
            Events::Gemini(e) => e.error(ev, status, message),
        }
    }
}

impl Conn {
    /// A streamed Anthropic or Gemini answer.
    pub(super) async fn stream_native(
        &mut self,
        call: Call,
        first: Duration,
        mode: Mode,
        keep_alive: bool,
    ) -> io::Result<Flow> {
        let keep_alive = keep_alive && mode != Mode::MissingDone;
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let stop = call.turn.map_or(Stop::End, |t| t.stop);
        let mut events = match call.dialect {
            Dialect::Gemini => Events::Gemini(gemini::Events::new(n, &call.model, call.prompt_tokens, stop)),
            _ => Events::Anthropic(anthropic::Events::new(n, &call.model, call.prompt_tokens, stop)),
        };
        let framing = events.framing();
        let pieces = events.pieces(call.answer);
        self.open_stream(first, mode, keep_alive).await?;
        events.start(&mut self.ev, pieces.len());
        if !self.ev.is_empty() {
            self.send_event().await?;
        }
        // Whether the last piece may carry the finish (Gemini): not when a fault ends the stream after it.
        let finishes = matches!(mode, Mode::Normal | Mode::Burst | Mode::Malformed(_));
        let mut sent: u32 = 0;
        for (i, piece) in pieces.iter().enumerate() {
            if self.before_piece(mode, sent, framing).await? {
                break;
            }
            let last = (finishes && i + 1 == pieces.len()).then_some(pieces.len());
            events.piece(&mut self.ev, piece, last);
            self.send_event().await?;
            sent += 1;
        }
        if let Mode::InBandError(_, status) = mode {
            let message = stock_message(call.dialect, status).replace("{model}", &call.model);
            events.error(&mut self.ev, status, &message);
            return self.end_stream(keep_alive).await;
        }
        if let Some(flow) = self.after_pieces(mode, sent, framing).await? {
            return Ok(flow);
        }
        events.finish(&mut self.ev, pieces.len(), mode == Mode::MissingDone);
        self.end_stream(keep_alive).await
    }
}
