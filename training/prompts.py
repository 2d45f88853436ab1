"""Instructions used to make the training text (SmolLM2-135M-Instruct answers them) and the
held-out instructions used by benchmarks/diffusion_quality.py (disjoint topics)."""
TEMPLATES = [
    "Write a short story about {}.",
    "Explain {} in simple words.",
    "Describe {} to a child.",
    "Give three facts about {}.",
    "Write a paragraph about {}.",
    "What is the history of {}?",
    "Why is {} important?",
    "Write a short poem about {}.",
    "Tell me something interesting about {}.",
    "How would you describe {} to a friend?",
]
# Instructions SmolLM2 answers in one line (median ~20 tokens at T=0.8), so the 64-token answer
# ends early and the rest is <|im_end|> padding: the regime LLaDA's SFT data is in (EOS-padded
# answers), where a diffusion model learns to end an answer and fill the tail with EOS.
SHORT_TEMPLATES = [
    "In one sentence, what is {}?",
    "Give a one-sentence definition of {}.",
    "Write a title for a story about {}.",
    "Write one sentence about {}.",
    "Answer briefly: what is {}?",
]
TRAIN_TOPICS = [
    "the ocean", "a lost cat", "the moon", "friendship", "a rainy day", "volcanoes", "the city of Paris",
    "honey bees", "the internet", "a dragon", "winter", "trees", "the sun", "music", "a robot",
    "the desert", "mountains", "a birthday party", "dogs", "rivers", "the human heart", "electricity",
    "a small village", "the stars", "a train journey", "chocolate", "gardening", "the rain forest",
    "a old lighthouse", "bicycles", "photosynthesis", "the Roman Empire", "a haunted house", "coffee",
    "a school day", "the weather", "penguins", "a pirate ship", "books", "the wind", "an island",
    "a snowman", "cooking pasta", "the brain", "a space station", "football", "a thunderstorm",
    "the pyramids", "a magic key", "butterflies", "a forest fire", "healthy food", "the printing press",
    "a knight", "clouds", "a family dinner", "recycling", "whales", "the color blue", "a market",
    "earthquakes", "a teacher", "a lost treasure", "the alphabet", "horses", "computers", "a castle",
    "the night sky", "a farmer", "ice cream", "the seasons", "a mystery", "a painter", "bridges",
    "the library", "sleep", "a storm at sea", "airplanes", "the Amazon river", "a clock", "kindness",
    "a young wizard", "a candle", "the first day of spring", "an ant colony", "a museum", "tea",
    "a detective", "the piano", "a waterfall", "owls", "the Great Wall of China", "a mirror",
    "running", "a small boat", "sharks", "the garden", "a old map", "rainbows", "a busy street",
]
HELDOUT_TOPICS = [
    "the river Nile", "a fox in the snow", "glaciers", "a violin", "the solar system", "a bakery",
    "a lonely giant", "tigers", "the telephone", "an autumn walk", "a submarine", "dinosaurs",
    "a quiet lake", "the Olympic games", "a secret door", "frogs",
]


def prompts(topics, templates=None):
    return [t.format(x) for x in topics for t in (TEMPLATES if templates is None else templates)]
