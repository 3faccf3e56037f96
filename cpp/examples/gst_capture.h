// A GStreamer pipeline as the camera app's source: the user's pipeline description feeds two
// branches the app adds and fixes the caps of, so any source works (videotestsrc, v4l2src, rtspsrc,
// filesrc ! decodebin, nvarguscamerasrc on a Jetson):
//
//   video.  ->  videoconvert name=video ! queue ! videoscale ! video/x-raw,format=RGB,width=W,height=H
//               ! appsink (no videorate: frames are sampled by timestamp, live_chunks.h)
//   audio.  ->  audioconvert name=audio ! queue ! audioresample ! audio/x-raw,format=F32LE,rate=16000,
//               channels=1 ! appsink
//
// The user's description links into `video.` and (optionally) `audio.`, e.g.
//   "videotestsrc is-live=true ! video.  audiotestsrc is-live=true ! audio."
//   "filesrc location=clip.mp4 ! decodebin name=d  d. ! video.  d. ! audio."
// A description that never names `audio.` has no audio branch (silence, stated once). Samples go
// to a ChunkAssembler (live_chunks.h) from GStreamer's streaming threads; bus errors, the end of
// the stream and stalls are reported by poll().
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "live_chunks.h"

namespace omnisift_live {

struct GstOptions {
  std::string description;   // the user's pipeline (see above)
  int height = 0, width = 0; // the export's resolution
};

enum class GstEvent { kNone, kEnded, kError };

class GstCapture {
 public:
  // Parses and starts the pipeline; on failure returns nullptr and sets `error` to one line.
  static std::unique_ptr<GstCapture> start(const GstOptions& options, ChunkQueue& queue, std::string& error);
  ~GstCapture();

  bool has_audio_branch() const { return has_audio_branch_; }
  // Bus messages since the last call: kEnded (end of stream), kError (`message` says what), kNone.
  GstEvent poll(std::string& message);
  // The video branch reached its end (the stream ended; audio after the video is not used).
  bool video_ended() const;
  // Seconds since the last sample (a stall when large).
  double idle_seconds() const;
  // Whole chunks handed to the queue so far.
  int64_t captured() const;
  // Under the capture lock: no audio will come (chunks get silence from now on).
  void set_no_audio();
  bool got_audio() const;
  double video_seconds() const;
  bool has_partial() const;
  bool started() const;
  // Stop feeding chunks (after --seconds): later samples are ignored.
  void stop_after(int64_t chunks);
  void stop();

  struct Impl;

 private:
  explicit GstCapture(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  bool has_audio_branch_ = false;
};

}  // namespace omnisift_live
