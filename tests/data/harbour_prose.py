"""A small real-text corpus for fine-tuning tests: plain English prose about one harbour town, written for mftd's tests.

``TRAIN`` and ``HELD_OUT`` share the town, its people and its style but no paragraph, so a model
that learns the corpus should find the held-out paragraphs less surprising.
"""

TRAIN = [
    "Every morning in Saltmere the ferry horn sounds at six, and Marta Quill unlocks the bakery on Harbour Lane before the gulls begin to argue over the fish market.",
    "Marta Quill bakes rye loaves, seed rolls and a sticky lemon bun that the fishermen of Saltmere buy by the dozen before they row out past the breakwater.",
    "The lighthouse on Gannet Point has been kept by the Ashdown family for three generations, and old Tobias Ashdown still climbs its ninety-one steps each evening.",
    "Tobias Ashdown keeps a logbook of every ship that passes Gannet Point, writing the name, the hour and the weather in a small neat hand.",
    "On market days the square in front of the Saltmere town hall fills with stalls selling mackerel, crab, wool, honey and pots of blue paint for boats.",
    "The harbour master, Ida Fenwick, walks the quay at noon with a brass bell, ringing it twice when the tide turns and three times when a storm is coming.",
    "When the wind swings to the north-east, the boats of Saltmere stay tied up in the harbour, and the fishermen mend their nets in the lee of the sea wall.",
    "Ida Fenwick says that the tide in Saltmere has never once been late, though it has often been higher than anyone wished.",
    "The school in Saltmere has one long classroom with tall windows facing the sea, and the children learn the names of the stars from Tobias Ashdown.",
    "In winter the ferry runs only twice a day, and the people of Saltmere buy their flour, lamp oil and letters in a single trip to the mainland.",
    "Marta Quill sends a basket of lemon buns up to the lighthouse every Sunday, and Tobias Ashdown sends back a jar of honey from the hives on Gannet Point.",
    "The old chapel above the harbour has a bell that was cast from the anchor of a wrecked schooner, and it rings for weddings, funerals and the first catch of spring.",
    "Fishermen in Saltmere paint their boats blue and white, and each boat carries the name of a grandmother, a daughter or a lucky star.",
    "At the end of Harbour Lane stands the net loft, where Ida Fenwick's brother Owen repairs sails and tells stories about the great storm of the old century.",
    "Owen Fenwick says the great storm lifted three boats onto the roof of the fish market and carried the bakery's sign halfway to Gannet Point.",
    "In spring the cliffs above Saltmere turn yellow with gorse, and the children climb down to the rock pools to count crabs, anemones and starfish.",
    "The ferry to Saltmere is an old green steamer called the Patience, and her captain, Nell Brody, has never missed a crossing in twenty years.",
    "Nell Brody keeps a kettle on the stove of the Patience, and any passenger who is cold or seasick is given a mug of sweet tea and a lemon bun.",
    "On the longest night of the year the people of Saltmere carry lanterns down to the harbour and set small paper boats adrift for the year to come.",
    "Tobias Ashdown lights the lamp on Gannet Point at dusk, trims the wick at midnight and writes the weather in his logbook before dawn.",
    "The fish market opens when the first boat ties up, and by nine o'clock the mackerel are sold, the ice is melting and the gulls have won again.",
    "When fog rolls in from the sea, Ida Fenwick rings the harbour bell every five minutes so that the boats of Saltmere can find their way home.",
    "Marta Quill's bakery smells of rye and lemon from dawn until noon, and in the afternoon she sits by the window and mends her brother's nets.",
    "Every autumn the town of Saltmere holds a regatta, and the blue and white boats race from the breakwater to Gannet Point and back again.",
]

HELD_OUT = [
    "Before the ferry horn sounds, Marta Quill has already lit the ovens on Harbour Lane, and the smell of rye drifts down to the quay where the boats are waiting.",
    "Old Tobias Ashdown climbs the steps of the lighthouse on Gannet Point and writes the name of every passing ship in his logbook.",
    "When a storm is coming, Ida Fenwick rings the brass bell three times, and the fishermen of Saltmere pull their blue and white boats higher up the slip.",
    "Nell Brody steers the Patience into the harbour of Saltmere and hands a mug of sweet tea to a passenger who looks cold.",
    "On market day the square fills with stalls of mackerel, honey and wool, and the children of Saltmere run between them with lemon buns.",
    "Owen Fenwick sits in the net loft at the end of Harbour Lane and tells the story of the great storm to anyone who will listen.",
]
