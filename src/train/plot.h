/* plot: the loss curve of a run as an SVG picture (training loss per step, validation loss
 * where it was measured), read from the run's log.jsonl. */
#ifndef SKEIN_PLOT_H
#define SKEIN_PLOT_H

#include "base/base.h"

sk_status plot_loss_svg(const char *log_jsonl, const char *svg_path);

#endif
