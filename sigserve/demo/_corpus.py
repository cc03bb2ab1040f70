"""A few hundred words of bundled English text to train the tiny T5's tokenizer offline.

It holds the T5 task prefixes and the notebook's example sentences, so that the prompts the demo
sends split into ordinary sub-words rather than unknown tokens.
"""

CORPUS = """\
translate English to German: The weather is lovely today.
translate English to French: Hello my name is Jon.
translate English to Romanian: The house is wonderful and the garden is green.
Signature-aware serving of models from a registry keeps clients working when a new version
arrives. A team registers a model version, and with nothing else to do it is served over HTTP.
A version whose signature would break the clients of that API is quarantined before anyone can
call it. The controller reads each version, decides whether it is live or quarantined, records
its reasons, and publishes a routing table that the serving application obeys.
The cat sits on the mat. A kitten is sitting on a rug near the window. The dog runs in the park
with a red ball, and the children laugh. Stock markets fell sharply today after the bank raised
its interest rates. Prices of bread, milk, coffee and cheese went up again this month.
We walk to the station every morning, take the train to the city, and drink a cup of tea before
work. On Sunday my family visits the old town by the river, where the bridges are made of stone.
Please send me the report by Friday. Thank you very much for your help with the translation.
Where is the library? How much does this book cost? I would like a table for two people.
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore.
Music, art and science grow when people share ideas freely and listen to each other.
The weather will be cold and windy tomorrow, with rain in the north and snow in the mountains.
Spring brings flowers, summer brings long warm evenings, autumn brings yellow leaves, and winter
brings short days and long nights. Numbers: one, two, three, four, five, six, seven, eight, nine,
ten, 0 1 2 3 4 5 6 7 8 9. Questions? Answers! Lists; colons: quotes "like this" and 'this'.
Das Wetter ist heute schön. Le temps est beau aujourd'hui. Vremea este frumoasă astăzi.
"""
