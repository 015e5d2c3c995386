"""Default values of the library, the CLI and the web server, each in one place.

The CLI's parser, the library functions and the web server read their defaults from here, so a default
changes in one line and ``--help`` says the same as the code does. The module imports nothing, so the
parser (and ``--help``) stays instant.
"""

# --- Encoders and indexes -------------------------------------------------------------------------------
DEFAULT_ENCODER = "efficientnet_lite0"
# "auto" picks the fastest runtime that works on this machine (see clothsim.runtimes).
DEFAULT_RUNTIME = "auto"
DEFAULT_INDEX_BACKEND = "exact"
DEFAULT_ENGINE = "local"
DEFAULT_DEVICE = "cpu"
# What `clothsim evaluate` compares when --encoders is not given: the study's backbones and the default.
DEFAULT_EVALUATE_ENCODERS = ("vgg16", "resnet50", "inception_v3", "efficientnet_lite0")
DEFAULT_SEED = 0

# --- Extraction ----------------------------------------------------------------------------------------------
#: Images per forward pass.
DEFAULT_BATCH_SIZE = 32
#: Processes decoding images in parallel with inference.
DEFAULT_DECODE_WORKERS = 2
#: Images encoded between two durable checkpoints of an index build.
DEFAULT_CHECKPOINT_EVERY = 1000
#: int8: catalogue photos (a seeded sample) that calibrate the quantized network, and how.
DEFAULT_CALIBRATION_IMAGES = 64
DEFAULT_CALIBRATION_METHOD = "minmax"

# --- Search ----------------------------------------------------------------------------------------------------
#: Results per query.
DEFAULT_K = 5
#: With a photo and a text together: the text's share of the query.
DEFAULT_TEXT_WEIGHT = 0.5
#: Refuse images above this many pixels (decompression bombs); Pillow's own default is ~89 MP.
DEFAULT_MAX_PIXELS = 64_000_000

# --- Serving -----------------------------------------------------------------------------------------------
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Largest accepted upload, in MiB.
DEFAULT_MAX_UPLOAD_MB = 20
#: Largest ``k`` a query may ask for.
DEFAULT_MAX_K = 50
#: The most memory a server may hold, in MiB (shared by its workers).
DEFAULT_MEMORY_BUDGET_MB = 2048.0
#: Uploads decoded at full size at the same time.
DEFAULT_DECODE_SLOTS = 4
#: How long an upload waits for memory to decode in before 503.
DEFAULT_QUEUE_TIMEOUT_S = 10.0
#: Seconds a client may take to send its request headers.
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: Seconds a client may take to send a request body, and may stay silent while sending it.
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_BODY_IDLE_TIMEOUT_S = 15.0
#: Open connections beyond which requests get 503 (shared by the workers).
DEFAULT_MAX_CONNECTIONS = 64
#: Server processes.
DEFAULT_SERVE_WORKERS = 1
#: Photos encoded together at most (the gain of batching on ONNX Runtime is in docs/benchmarks.md).
DEFAULT_MAX_BATCH = 32
#: How long a batch waits for announced photos after its first one arrived, in seconds.
DEFAULT_BATCH_WAIT_S = 0.005
#: On SIGTERM or Ctrl-C, how long requests in flight may take to finish.
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
#: How often a server looks at its index folder for a new committed state, in seconds.
DEFAULT_FOLLOW_S = 1.0

# --- Evaluation, labelling and duplicates ------------------------------------------------------------------
#: Gallery photos whose altered copies the instance guard queries (``clothsim evaluate``).
DEFAULT_INSTANCE_QUERIES = 1000
#: The text each label is encoded as when labelling through a text tower; ``{}`` is the label.
DEFAULT_LABEL_PROMPT = "a photo of a {}"
#: The near-duplicate threshold before any calibration: where, for the default encoder on real clothing
#: photos, copies made by resizing, re-compression, cropping, mirroring and retouching are found at high
#: precision (docs/duplicates.md). Other encoders need their own: calibrate.
DEFAULT_DUPLICATE_THRESHOLD = 0.90
#: Nearest items looked at per item when looking for near-duplicates.
DEFAULT_DUPLICATE_NEIGHBOURS = 10
#: Photos of the index altered to calibrate the near-duplicate threshold.
DEFAULT_CALIBRATION_SAMPLE = 200

# --- Training a tuned encoder (``clothsim train``, :class:`clothsim.training.tuned_trainer.TuneConfig`) ------
DEFAULT_TUNE_BACKBONE = "efficientnet_lite0"
DEFAULT_TUNE_TRAIN_LAYERS = 1
DEFAULT_TUNE_POOLING = "gem"
#: Initial GeM exponent: the best validation P@5 of the tuned-encoder sweep (docs/benchmarks.md).
DEFAULT_GEM_P = 3.0
DEFAULT_TUNE_HIDDEN_DIM = 0
DEFAULT_TUNE_EMBEDDING_DIM = 256
DEFAULT_TUNE_LOSS = "multi-similarity"
DEFAULT_TUNE_MEMBERS = 1
DEFAULT_TUNE_LABELS = "category"
DEFAULT_TUNE_VIEWS = 3
DEFAULT_TUNE_MIN_SCALE = 0.5
DEFAULT_TUNE_JITTER = 0.2
DEFAULT_TUNE_EPOCHS = 30
DEFAULT_TUNE_PATIENCE = 5
DEFAULT_TUNE_BATCH_SIZE = 64
DEFAULT_TUNE_M = 8
DEFAULT_TUNE_LR = 1e-3
DEFAULT_TUNE_BACKBONE_LR_SCALE = 0.1
DEFAULT_TUNE_WEIGHT_DECAY = 1e-4
DEFAULT_TUNE_SCHEDULE = "constant"
DEFAULT_TUNE_EMA = 0.0
#: Image-decoding processes while the lower layers are cached.
DEFAULT_TUNE_WORKERS = 1

# --- Training a Siamese head (``clothsim train-siamese``, :class:`clothsim.training.trainer.TrainConfig`) ----
DEFAULT_SIAMESE_ENCODER = "vgg16"
#: Images per forward pass while the feature maps are cached, and the processes decoding them.
DEFAULT_SIAMESE_BATCH_SIZE = 16
DEFAULT_SIAMESE_WORKERS = 1
DEFAULT_SIAMESE_EMBEDDING_DIM = 128
DEFAULT_SIAMESE_DROPOUT = 0.2
DEFAULT_SIAMESE_MARGIN = 1.0
DEFAULT_SIAMESE_NEGATIVE_RATIO = 1.0
DEFAULT_SIAMESE_EPOCHS = 100
DEFAULT_SIAMESE_PAIR_BATCH = 256
DEFAULT_SIAMESE_LR = 1e-3
DEFAULT_SIAMESE_WEIGHT_DECAY = 0.0
DEFAULT_SIAMESE_PATIENCE = 10
DEFAULT_VAL_FRACTION = 0.1
#: ``--fine-tune conv5``: VGG16's conv5 block learns too (:func:`clothsim.training.siamese_conv5.siamese_conv5_config`).
DEFAULT_CONV5_EMBEDDING_DIM = 256
DEFAULT_CONV5_EPOCHS = 6
DEFAULT_CONV5_PATIENCE = 2

# --- Reports and ensembles ------------------------------------------------------------------------------------
#: ``clothsim evaluate``: queries in each encoder's result grid, and points in the t-SNE maps.
DEFAULT_GRID_QUERIES = 6
DEFAULT_TSNE_POINTS = 1000
#: ``clothsim fit-ensemble``: how the parts' vectors are combined, and the spacing of the weight search grid.
DEFAULT_ENSEMBLE_METHOD = "average"
DEFAULT_ENSEMBLE_GRID_STEP = 0.1
