// camera_app --gst: a live GStreamer source through the session, with docs/live.md's chunking,
// bounded queue, drop policy, counters and JSON-lines events (built with GStreamer only).
#pragma once

#include <string>

#include "omnisift/session.h"

struct LiveArgs {
  std::string pipeline;          // --gst
  bool require_audio = false;    // --require-audio: no audio is an error, not silence
  std::string drop_policy = "oldest";
  int queue = 2;                 // chunks
  std::string events;            // --events FILE (JSON lines); "" none
  double read_timeout = 5;       // seconds without a sample: the stream stalled
  double seconds = 0;            // source seconds to capture; 0: until the stream ends
  double ask_every = 0;
  std::string question;
  int process_delay_ms = 0;      // added after each chunk: inference slower than the camera (tests, demos)
  std::string backend;           // for the start event
  double ratio = 0;
};

// Runs the stream; returns the exit code (0, or 1 after one line on stderr).
int run_live(const LiveArgs& args, omnisift::Session& session, const omnisift::ExportFolder& folder);
