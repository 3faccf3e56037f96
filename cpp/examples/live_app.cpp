// camera_app --gst (live_app.h): capture (GStreamer streaming threads) -> ChunkAssembler -> bounded
// ChunkQueue (drop policy) -> this thread: session chunks, questions, events. docs/cpp.md, "Live
// cameras with GStreamer"; the policies and the event fields are docs/live.md's.
#include "live_app.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "gst_capture.h"
#include "live_chunks.h"

using omnisift_live::Clock;
using nlohmann::json;

namespace {

std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) { g_interrupted = true; }

double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// JSON lines to --events (nothing without one); flushed per line so a reader follows the stream.
class Events {
 public:
  explicit Events(const std::string& path) {
    if (!path.empty()) out_ = std::make_unique<std::ofstream>(path, std::ios::trunc);
  }
  bool ok() const { return !out_ || out_->good(); }
  void write(const std::string& event, json fields) {
    if (!out_) return;
    fields["event"] = event;
    fields["wall"] = wall_now();
    *out_ << fields.dump() << "\n" << std::flush;
  }

 private:
  std::unique_ptr<std::ofstream> out_;
};

struct Counters {
  int64_t processed = 0, partial = 0;
  std::vector<double> lags;
  std::deque<omnisift_live::LiveChunk> in_session;   // pushed, not yet run by the session (its log-mel look-ahead)
};

// Chunk events for the chunks the session ran since the last call.
void report_chunks(omnisift::Session& session, Counters& c, const omnisift_live::ChunkQueue& queue, Events& events,
                   int64_t& seen) {
  while (seen < session.chunks() && !c.in_session.empty()) {
    const omnisift_live::LiveChunk& done = c.in_session.front();
    const double lag = ms_since(done.complete);
    c.lags.push_back(lag);
    ++c.processed;
    const omnisift::ChunkLayout& layout = session.layout().chunks()[static_cast<size_t>(seen)];
    std::vector<int64_t> kv, ka;
    for (int64_t i : session.last_kept_index()) (i < layout.n_video() ? kv : ka).push_back(i < layout.n_video() ? i : i - layout.n_video());
    events.write("chunk", {{"index", done.index}, {"capture_time", done.capture_time}, {"video_tokens", layout.n_video()},
                           {"audio_tokens", layout.n_audio}, {"kept_video", kv.size()}, {"kept_audio", ka.size()},
                           {"kept_video_index", kv}, {"kept_audio_index", ka}, {"lag_ms", std::round(lag * 10) / 10},
                           {"dropped", queue.dropped()}, {"processed", c.processed}, {"audio_filled", done.audio_filled}});
    c.in_session.pop_front();
    ++seen;
  }
}

// Ask and stream the answer to stdout; the answer event carries the timings.
omnisift::Status ask(omnisift::Session& session, const std::string& question, const char* origin, int64_t after_chunk,
                     Events& events) {
  std::cout << "Q: " << question << "\nA: " << std::flush;
  const Clock::time_point asked = Clock::now();
  Clock::time_point first;
  int64_t tokens = 0;
  auto answer = session.ask(question, [&](const omnisift::TokenEvent& e) {
    if (tokens++ == 0) first = Clock::now();
    std::cout << e.text << std::flush;
    return true;
  });
  std::cout << "\n";
  if (!answer.ok()) return answer.status();
  const double decode_s = tokens > 1 ? std::chrono::duration<double>(Clock::now() - first).count() : 0;
  events.write("answer", {{"question", question}, {"text", answer->text}, {"origin", origin},
                          {"ttft_ms", tokens ? std::chrono::duration<double, std::milli>(first - asked).count() : 0.0},
                          {"tokens", tokens}, {"tokens_per_s", decode_s > 0 ? (tokens - 1) / decode_s : 0.0},
                          {"after_chunk", after_chunk}});
  return omnisift::Status::Ok();
}

int fail_line(const std::string& line) {
  std::cerr << "camera_app: " << line << "\n";
  return 1;
}

}  // namespace

int run_live(const LiveArgs& args, omnisift::Session& session, const omnisift::ExportFolder& folder) {
  const omnisift::Manifest& m = folder.manifest();
  auto policy = omnisift_live::parse_drop_policy(args.drop_policy);
  if (!policy) return fail_line("--drop-policy must be oldest or thin; got " + args.drop_policy);
  if (args.queue < 1) return fail_line("--queue must be at least 1 chunk");
  Events events(args.events);
  if (!events.ok()) return fail_line("cannot write --events " + args.events + "; pick a writable path");
  omnisift_live::ChunkQueue queue(static_cast<size_t>(args.queue), *policy);
  std::string error;
  auto capture = omnisift_live::GstCapture::start({args.pipeline, m.height, m.width}, queue, error);
  if (!capture) return fail_line(error);
  const int64_t limit = args.seconds > 0 ? static_cast<int64_t>(std::ceil(args.seconds / 2.0)) : -1;
  capture->stop_after(limit);
  const auto& d = m.dims;
  events.write("start", {{"source", args.pipeline}, {"export", folder.path()}, {"backend", args.backend},
                         {"ratio", args.ratio}, {"resolution", {m.height, m.width}},
                         {"grid", {d.grid_h / d.spatial_merge, d.grid_w / d.spatial_merge}},
                         {"policy", args.drop_policy}, {"queue", args.queue}});
  auto no_audio = [&](const std::string& why) -> bool {   // false: --require-audio refuses
    if (args.require_audio) return false;
    const std::string text = why + "; the audio is silence";
    std::cerr << "camera_app: " << text << "\n";
    events.write("notice", {{"text", text}});
    capture->set_no_audio();
    return true;
  };
  if (!capture->has_audio_branch() &&
      !no_audio("the --gst pipeline has no audio branch (link one into `audio.`)"))
    return fail_line("--require-audio: the --gst pipeline has no audio branch; link the source's audio into `audio.` "
                     "(e.g. \"d. ! audio.\")");
  bool audio_checked = !capture->has_audio_branch();
  std::signal(SIGINT, on_sigint);   // Ctrl-C ends the stream cleanly: the last question, the end event

  Counters c;
  int64_t seen = 0, last_index = -1;
  size_t pushed_ahead = 0;
  // One whole chunk into the session: 4 frames, 2 s of PCM; chunk events for what the session ran.
  auto process = [&](omnisift_live::LiveChunk chunk) -> omnisift::Status {
    if (args.process_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(args.process_delay_ms));
    for (const auto& frame : chunk.frames) OMNISIFT_RETURN_IF_ERROR(session.push_frame({frame.data(), m.height, m.width}));
    last_index = chunk.index;
    c.in_session.push_back(std::move(chunk));
    // the chunk's samples not pushed yet (the last chunk's look-ahead was its first ones), then its
    // look-ahead, so the session runs it now rather than when the next chunk's audio comes
    const omnisift_live::LiveChunk& in = c.in_session.back();
    const size_t skip = std::min(pushed_ahead, in.pcm.size());
    omnisift::Status st = session.push_audio(in.pcm.data() + skip, in.pcm.size() - skip);
    if (st.ok()) st = session.push_audio(in.lookahead.data(), in.lookahead.size());
    pushed_ahead = in.lookahead.size();
    if (st.code() == omnisift::StatusCode::kContextFull)
      return omnisift::Status(st.code(), st.message() + " (--context-policy sliding keeps streaming)");
    OMNISIFT_RETURN_IF_ERROR(st);
    report_chunks(session, c, queue, events, seen);
    return omnisift::Status::Ok();
  };
  double next_ask = args.ask_every > 0 ? args.ask_every : -1;
  std::string reason = "seconds", failure;
  for (;;) {
    for (const auto& drop : queue.take_drops())
      events.write("drop", {{"index", drop.index}, {"capture_time", drop.capture_time}, {"policy", args.drop_policy},
                            {"dropped", queue.dropped()}});
    omnisift_live::LiveChunk chunk;
    if (queue.take(chunk, std::chrono::milliseconds(100))) {
      const double end_time = chunk.capture_time + 2.0;
      omnisift::Status st = process(std::move(chunk));
      if (!st.ok()) return fail_line(st.to_string());
      if (next_ask > 0 && end_time >= next_ask) {
        next_ask += args.ask_every;
        st = ask(session, args.question, "timer", last_index, events);
        if (!st.ok()) return fail_line(st.to_string());
        report_chunks(session, c, queue, events, seen);   // the question ran the chunk waiting for look-ahead
      }
      continue;
    }
    if (limit >= 0 && capture->captured() >= limit && queue.size() == 0) break;
    if (g_interrupted) { reason = "interrupted"; break; }
    std::string message;
    const omnisift_live::GstEvent event = capture->poll(message);
    if ((event == omnisift_live::GstEvent::kEnded || capture->video_ended()) && queue.size() == 0) {
      reason = "source ended";
      break;
    }
    if (event == omnisift_live::GstEvent::kError) {
      reason = "error";
      failure = "the --gst stream failed after " + std::to_string(capture->captured()) + " chunks (" + message + ")";
      break;
    }
    if (!audio_checked && capture->video_seconds() >= 3.0) {   // an audio branch that never got a sample
      audio_checked = true;
      if (!capture->got_audio() && !no_audio("no audio arrived in the first 3 s of video")) {
        reason = "error";
        failure = "--require-audio: no audio arrived in the first 3 s of video; check the pipeline's audio branch";
        break;
      }
    }
    if (capture->idle_seconds() > args.read_timeout) {
      reason = "error";
      failure = std::string(capture->started() ? "the --gst stream stalled" : "the --gst pipeline produced no frame") +
                ": no data for " + std::to_string(static_cast<int>(args.read_timeout)) + " s after " +
                std::to_string(capture->captured()) + " chunks (--read-timeout)";
      break;
    }
  }
  capture->stop();
  for (omnisift_live::LiveChunk rest; queue.take(rest, std::chrono::milliseconds(0));) {   // what was queued still runs
    omnisift::Status st = process(std::move(rest));
    if (!st.ok()) return fail_line(st.to_string());
  }
  c.partial = capture->has_partial() && (limit < 0 || capture->captured() < limit) ? 1 : 0;
  if (!failure.empty()) std::cerr << "camera_app: " << failure << (c.partial ? "; the partial chunk was discarded" : "") << "\n";
  if (session.chunks() > 0 || !c.in_session.empty()) {
    omnisift::Status asked = ask(session, args.question, "end", last_index, events);
    if (!asked.ok()) return fail_line(asked.to_string());
    report_chunks(session, c, queue, events, seen);
  }
  const int64_t captured = capture->captured();
  events.write("end", {{"reason", reason}, {"captured", captured}, {"processed", c.processed}, {"dropped", queue.dropped()},
                       {"partial", c.partial}, {"reconnects", 0}, {"lag_ms_p50", omnisift_live::percentile(c.lags, 0.5)},
                       {"lag_ms_p95", omnisift_live::percentile(c.lags, 0.95)}});
  std::cout << "live: captured " << captured << ", processed " << c.processed << ", dropped " << queue.dropped()
            << ", partial " << c.partial << ", lag p50 " << omnisift_live::percentile(c.lags, 0.5) << " ms, p95 "
            << omnisift_live::percentile(c.lags, 0.95) << " ms, policy " << args.drop_policy << ", end: " << reason << "\n";
  return failure.empty() ? 0 : 1;
}
